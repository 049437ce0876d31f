"""Tiny stand-ins for the real HuBERT and WeNet weights, built by the tests themselves.

`tiny_hubert_dir`: a random HubertModel with hubert-large's geometry where the front-end reads it
(16 kHz, 320-sample stride, hidden size 1024) but one small layer, saved with save_pretrained.
`tiny_wenet_onnx`: a small torch module with the input/output signature and metadata of WeNet's
`export_onnx_cpu.py` encoder.onnx (chunk, offset, required_cache_size, att_cache, cnn_cache,
att_mask -> output, r_att_cache, r_cnn_cache), exported with torch.onnx (TorchScript exporter).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

WENET_META = {"chunk_size": 16, "left_chunks": 4, "subsampling_rate": 4, "right_context": 6,
              "output_size": 512, "num_blocks": 2, "head": 4, "cnn_module_kernel": 3, "feature_size": 80,
              "batch": 1}


def tiny_hubert_dir(path: Path) -> Path:
    from transformers import HubertConfig, HubertModel

    torch.manual_seed(0)
    config = HubertConfig(hidden_size=1024, num_hidden_layers=1, num_attention_heads=4, intermediate_size=64,
                          conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=16,
                          feat_extract_norm="layer", do_stable_layer_norm=True)
    HubertModel(config).eval().save_pretrained(str(path))
    (path / "preprocessor_config.json").write_text(json.dumps(
        {"do_normalize": True, "feature_size": 1, "sampling_rate": 16000, "padding_value": 0.0}))
    return path


class TinyWenetEncoder(nn.Module):
    """Conv2d subsampling by 4 (right context 6) + a projection to 512; the caches carry state
    from chunk to chunk the way WeNet's do (att_cache keeps the newest required_cache_size frames)."""

    def __init__(self, meta: dict = WENET_META):
        super().__init__()
        self.meta = meta
        self.conv = nn.Sequential(nn.Conv2d(1, 4, 3, 2), nn.ReLU(), nn.Conv2d(4, 4, 3, 2), nn.ReLU())
        self.proj = nn.Linear(4 * 19, meta["output_size"])  # 80 bins -> 39 -> 19

    def forward(self, chunk, offset, required_cache_size, att_cache, cnn_cache, att_mask):
        m = self.meta
        x = self.conv(chunk.unsqueeze(1))  # (1, 4, T', 19)
        b, c, t, f = x.shape
        x = self.proj(x.transpose(1, 2).reshape(b, t, c * f))  # (1, T', 512)
        streaming = m["left_chunks"] > 0  # 16/4 mode: real cache and mask; else att_mask is unused (pruned)
        history = att_cache.sum() / (att_cache.numel() + 1) + cnn_cache.mean()  # state from earlier chunks
        if streaming:
            history = history * att_mask.float().mean()
        x = torch.tanh(x + history + offset.float() * 1e-4)
        d_k = m["output_size"] // m["head"]
        kv = x.reshape(1, t, m["head"], d_k).transpose(1, 2)  # (1, head, T', d_k)
        kv = torch.cat([kv, kv], dim=-1).expand(m["num_blocks"], -1, -1, -1)
        r_att = torch.cat([att_cache, kv], dim=2)
        if streaming:
            r_att = r_att[:, :, -m["chunk_size"] * m["left_chunks"]:]
        r_cnn = torch.cat([cnn_cache, x.transpose(1, 2).unsqueeze(0).expand(m["num_blocks"], -1, -1, -1)],
                          dim=-1)[..., -(m["cnn_module_kernel"] - 1):]
        return x, r_att, r_cnn


def tiny_wenet_onnx(path: Path, meta: dict = WENET_META) -> Path:
    import onnx

    torch.manual_seed(0)
    model = TinyWenetEncoder(meta).eval()
    required = meta["chunk_size"] * max(meta["left_chunks"], 0)
    window = (meta["chunk_size"] - 1) * meta["subsampling_rate"] + meta["right_context"] + 1
    d_k2 = meta["output_size"] // meta["head"] * 2
    inputs = (torch.randn(1, window, 80), torch.tensor(required, dtype=torch.int64),
              torch.tensor(required, dtype=torch.int64),
              torch.zeros(meta["num_blocks"], meta["head"], required, d_k2),
              torch.zeros(meta["num_blocks"], 1, meta["output_size"], meta["cnn_module_kernel"] - 1),
              torch.ones((1, 1, required + meta["chunk_size"]) if required else (0, 0, 0), dtype=torch.bool))
    torch.onnx.export(model, inputs, str(path), opset_version=13, dynamo=False,
                      input_names=["chunk", "offset", "required_cache_size", "att_cache", "cnn_cache", "att_mask"],
                      output_names=["output", "r_att_cache", "r_cnn_cache"],
                      dynamic_axes={"chunk": {1: "T"}, "att_cache": {2: "T_CACHE"}, "att_mask": {2: "T_ADD_T_CACHE"},
                                    "output": {1: "T"}, "r_att_cache": {2: "T_CACHE"}})
    proto = onnx.load(str(path))
    for k, v in {**meta, "decoding_window": window}.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = str(k), str(v)
    onnx.save(proto, str(path))
    return path
