"""Export Qwen2.5-VL's vision encoder and its token-embedding step to ONNX, as onnxruntime-genai reads them.

onnxruntime-genai 0.18's `qwen2_5_vl` model runs three sessions (names from its C++
`Config::Model::{Vision,Embedding}` and its qwen2-5-vl test model):

  vision.onnx     pixel_values [num_patches, 1176] f32, image_grid_thw [num_images, 3] i64
                  -> image_features [num_patches / 4, text hidden] f32  (one image per call)
  embedding.onnx  input_ids [batch, seq] i64, image_features [num_features, hidden] f32
                  -> inputs_embeds [batch, seq, hidden] f32
  model.onnx      the text decoder, built by the onnxruntime-genai builder with exclude_embeds=true
                  (inputs_embeds + 3-D mrope position_ids, which the runtime computes)

For a single-ONNX CPU/CUDA model the runtime expects the window attention "baked into
the graph". transformers computes the windows with Python loops over `grid_thw.tolist()`
and permutes the tokens window by window, which an exported graph cannot follow for
other image sizes. `QwenVisionEncoder` computes the same thing with tensor arithmetic:
each patch's (h, w) position and window come from its index and the grid, windowed and
full attention are masks over one attention, and since attention ignores order the
permutation (and its inverse) is unnecessary. The result equals transformers' to float
rounding for every grid (checked at conversion on several image sizes).
"""

from __future__ import annotations

from pathlib import Path

from ortserve.conversion.common import ConversionError, quiet_exporter

VISION_FILE = "vision.onnx"
EMBEDDING_FILE = "embedding.onnx"


def _modules():
    import torch
    from torch import nn
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    class QwenVisionEncoder(nn.Module):
        """transformers' Qwen2_5_VisionTransformer weights, with windows as masks (see the module docstring)."""

        def __init__(self, visual, config):
            super().__init__()
            self.visual = visual
            self.merge = int(config.spatial_merge_size)
            self.window = int(config.window_size) // self.merge // int(config.patch_size)  # in merged tokens
            self.full_attention = {int(i) for i in config.fullatt_block_indexes}

        def forward(self, pixel_values: torch.Tensor, image_grid_thw: torch.Tensor) -> torch.Tensor:
            v, m = self.visual, self.merge
            x = v.patch_embed(pixel_values)
            index = torch.arange(x.shape[0], device=x.device)
            h, w = image_grid_thw[0, 1], image_grid_thw[0, 2]
            frame = index // (h * w)
            unit = index % (h * w) // (m * m)  # merged token within the frame, row-major over (h/m, w/m)
            inner = index % (m * m)
            unit_h, unit_w = unit // (w // m), unit % (w // m)
            positions = torch.stack([unit_h * m + inner // m, unit_w * m + inner % m], dim=-1)
            cos, sin = v.rotary_pos_emb(x, positions)
            same_frame = frame[:, None] == frame[None, :]
            win_h, win_w = unit_h // self.window, unit_w // self.window
            same_window = same_frame & (win_h[:, None] == win_h[None, :]) & (win_w[:, None] == win_w[None, :])
            lowest = torch.finfo(x.dtype).min
            full_bias = torch.where(same_frame, 0.0, lowest).to(x.dtype)
            window_bias = torch.where(same_window, 0.0, lowest).to(x.dtype)
            for layer, block in enumerate(v.blocks):
                bias = full_bias if layer in self.full_attention else window_bias
                x = x + self._attention(block.attn, block.norm1(x), cos, sin, bias)
                x = x + block.mlp(block.norm2(x))
            return v.merger(x)

        @staticmethod
        def _attention(attn, x, cos, sin, bias):
            seq = x.shape[0]
            q, k, val = attn.qkv(x).reshape(seq, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
            q, k = apply_rotary_pos_emb_vision(q, k, cos, sin)
            q, k, val = q.transpose(0, 1), k.transpose(0, 1), val.transpose(0, 1)  # [heads, seq, dim]
            scores = torch.matmul(q, k.transpose(1, 2)) * attn.scaling + bias
            probs = torch.softmax(scores, dim=-1, dtype=torch.float32).to(q.dtype)
            out = torch.matmul(probs, val).transpose(0, 1).reshape(seq, -1)
            return attn.proj(out)

    class QwenEmbedding(nn.Module):
        """Token embeddings with the image features written over the image-pad tokens, in order."""

        def __init__(self, embed_tokens, image_token_id: int):
            super().__init__()
            self.embed_tokens = embed_tokens
            self.image_token_id = int(image_token_id)

        def forward(self, input_ids: torch.Tensor, image_features: torch.Tensor) -> torch.Tensor:
            embeds = self.embed_tokens(input_ids)
            is_image = input_ids == self.image_token_id
            # a zero row at the end: text-only prompts (no features) and a surplus of pad tokens index it
            features = torch.cat([image_features.to(embeds.dtype), embeds.new_zeros(1, embeds.shape[-1])], dim=0)
            last = features.shape[0] - 1
            order = torch.cumsum(is_image.reshape(-1).to(torch.int64), dim=0).reshape(input_ids.shape) - 1
            order = torch.where(is_image, order, last).clamp(max=last)
            return torch.where(is_image[..., None], features[order], embeds)

    return QwenVisionEncoder, QwenEmbedding


def vision_encoder(model):
    """The exportable vision encoder of a loaded Qwen2_5_VLForConditionalGeneration."""
    encoder_cls, _ = _modules()
    return encoder_cls(model.model.visual, model.config.vision_config).eval()


def embedding_module(model):
    _, embedding_cls = _modules()
    return embedding_cls(model.model.get_input_embeddings(), model.config.image_token_id).eval()


def _export(module, args: tuple, path: Path, input_names: list[str], output_name: str, dynamic: dict) -> None:
    import torch

    try:
        with quiet_exporter(), torch.no_grad():
            program = torch.onnx.export(
                module,
                args,
                dynamo=True,
                verbose=False,
                input_names=input_names,
                output_names=[output_name],
                dynamic_shapes=dynamic,
                optimize=True,
            )
            program.save(str(path), external_data=_big(module))
    except ConversionError:
        raise
    except Exception as exc:
        text = str(exc).strip().splitlines()
        raise ConversionError(
            f"ONNX export of {path.name} failed: {type(exc).__name__}: {text[0] if text else ''}"[:300]
        ) from exc


def _big(module) -> bool:
    """Weights over 1 GiB go to an external .data file (protobuf's limit is 2 GiB)."""
    return sum(p.numel() * p.element_size() for p in module.parameters()) > 2**30


def export_vision(model, out: Path) -> None:
    """Write vision.onnx and embedding.onnx into `out` (fp32)."""
    import torch

    vcfg = model.config.vision_config
    patch_dim = 3 * int(vcfg.temporal_patch_size) * int(vcfg.patch_size) ** 2
    grid = torch.tensor([[1, 4, 6]], dtype=torch.int64)  # 24 patches, 6 merged tokens
    pixels = torch.randn(24, patch_dim)
    patches = torch.export.Dim("num_patches", min=4)
    _export(
        vision_encoder(model),
        (pixels, grid),
        out / VISION_FILE,
        ["pixel_values", "image_grid_thw"],
        "image_features",
        {"pixel_values": {0: patches}, "image_grid_thw": None},
    )

    hidden = int(model.config.text_config.hidden_size)
    ids = torch.randint(0, int(model.config.text_config.vocab_size), (1, 12), dtype=torch.int64)
    ids[0, 3:6] = int(model.config.image_token_id)
    features = torch.randn(3, hidden)
    batch, seq = torch.export.Dim("batch_size"), torch.export.Dim("sequence_length")
    feats = torch.export.Dim("num_features")
    _export(
        embedding_module(model),
        (ids, features),
        out / EMBEDDING_FILE,
        ["input_ids", "image_features"],
        "inputs_embeds",
        {"input_ids": {0: batch, 1: seq}, "image_features": {0: feats}},
    )
