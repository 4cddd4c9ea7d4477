"""What exists and what is loaded: the registry's records as OpenAI's model cards (GET /v1/models) and
Ollama's process list (GET /api/ps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ortserve.server.loading import ResidentModel, ServedName
from ortserve.server.protocol.models import ModelCard, ModelList
from ortserve.server.protocol.ps import ModelDetails, ProcessList, RunningModel
from ortserve.server.registry import Registry


def model_card(served: ServedName) -> ModelCard:
    return ModelCard(id=served.name, created=served.entry.created, owned_by=served.entry.config.owned_by)


async def list_models(registry: Registry) -> ModelList:
    """Every served name, then every alias not shadowed by a name."""
    return ModelList(data=[model_card(served) for served in await registry.served_names()])


async def retrieve_model(registry: Registry, model: str) -> ModelCard:
    return model_card(await registry.served_name(model))


def running_model(loaded: ResidentModel, now: datetime | None = None) -> RunningModel:
    """One loaded model, listed once under the name it was last used under (`names`: all it serves)."""
    expires_in, expires_at = loaded.expires_in, None
    if expires_in is not None:
        try:  # a keep_alive of many centuries is forever, as far as a date can say
            expires_at = (now or datetime.now(UTC)) + timedelta(seconds=expires_in)
        except OverflowError:
            expires_in = None
    manifest = loaded.manifest
    return RunningModel(
        name=loaded.name,
        model=loaded.name,
        names=list(loaded.names),
        size=loaded.size,
        size_vram=loaded.size_vram,
        details=ModelDetails(
            family=manifest.get("family") or manifest.get("model_type"), quantization_level=manifest.get("precision")
        ),
        expires_at=expires_at.isoformat(timespec="seconds") if expires_at else None,
        expires_in=None if expires_in is None else round(expires_in, 1),
        device=loaded.device,
        task=loaded.task,
        context_length=loaded.context_length,
        requests=loaded.requests,
    )


def list_running_models(registry: Registry) -> ProcessList:
    return ProcessList(models=[running_model(loaded) for loaded in registry.running()])
