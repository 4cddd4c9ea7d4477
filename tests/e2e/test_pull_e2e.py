"""A serve-only install: `ortserve pull` then `ortserve serve` with torch, transformers and
sentence-transformers unimportable (tests/e2e/without_torch.py), driven by the openai client."""

from __future__ import annotations

from pathlib import Path

from tests.conftest import CHAT_REPO, EMBEDDING_REPO
from tests.e2e.conftest import start_server, stop_server_cleanly
from tests.local_hub import pull_cli

WITHOUT_TORCH = Path(__file__).with_name("without_torch.py")


def test_pull_and_serve_without_torch(local_hub, tmp_path):
    home = tmp_path / "home"
    for reference in (CHAT_REPO, EMBEDDING_REPO):
        pulled = pull_cli(home, local_hub.url, "pull", reference, "--quiet", runner=WITHOUT_TORCH)
        assert pulled.returncode == 0, pulled.stderr
        assert "blocked import" not in pulled.stderr  # nothing even tried to import them
    server = start_server(home, tmp_path / "server.log", runner=WITHOUT_TORCH)
    try:
        client = server.client(max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model="tiny-chat", messages=[{"role": "user", "content": "Hello"}], max_tokens=3, temperature=0
        )
        assert reply.usage.completion_tokens >= 1
        vectors = client.embeddings.create(model="all-minilm-l6-v2", input=["Hello", "World"])
        assert [len(d.embedding) for d in vectors.data] == [384, 384]
    finally:
        stop_server_cleanly(server)
    assert "blocked import" not in server.log.read_text(errors="replace")  # the runners included
