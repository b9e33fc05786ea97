"""A series on the Hugging Face hub: a repository plus a revision schedule kept as data.

Only the files a purpose needs are downloaded: config.json, the shard index, and the shards that
hold attention tensors (purpose "attention") or all shards (purpose "full", for booting).
Without network it fails fast, before any download, with the way to use a local copy instead.
"""

from __future__ import annotations

import json
import os
import socket
from pathlib import Path

from headscreen.series.base import TOKENIZER_FILES, Checkpoint, Series
from headscreen.series.errors import HubUnavailable
from headscreen.series.schedules import Revision
from headscreen.series.tensors import SAFETENSORS_INDEX

HUB_HOST = "huggingface.co"
_ATTENTION_MARKERS = ("attn", "attention")


def hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes"):
        return False
    try:
        with socket.create_connection((HUB_HOST, 443), timeout=timeout):
            return True
    except OSError:
        return False


class HubSeries(Series):
    source_kind = "hub"

    def __init__(self, repo: str, revisions: list[Revision], *, cache_dir: str | Path | None = None,
                 allow_pickle: bool = False, trust_remote_code: bool = False):
        self.repo = repo
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self._checked = False
        ckpts = [Checkpoint(r.step, r.tokens, r.revision) for r in revisions]
        super().__init__(repo, ckpts, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    def _ensure_reachable(self) -> None:
        if self._checked:
            return
        if not hub_reachable():
            raise HubUnavailable(
                f"the Hugging Face hub is not reachable (or HF_HUB_OFFLINE is set), so {self.repo} cannot be "
                f"downloaded. On a machine with network run e.g. `huggingface-cli download {self.repo} --revision "
                f"{self.checkpoints[-1].name} --local-dir DIR/{self.checkpoints[-1].name}` for each revision, copy "
                "DIR here (tokenizer files at its root), then screen the local copy: `headscreen screen DIR`."
            )
        self._checked = True

    def _download(self, filename: str, revision: str) -> Path:
        from huggingface_hub import hf_hub_download

        return Path(hf_hub_download(self.repo, filename, revision=revision, cache_dir=self.cache_dir))

    def folder(self, ckpt: Checkpoint, purpose: str = "attention") -> Path:
        self._ensure_reachable()
        from huggingface_hub import list_repo_files

        files = set(list_repo_files(self.repo, revision=ckpt.name))
        cfg = self._download("config.json", ckpt.name)
        if SAFETENSORS_INDEX in files:
            index = json.loads(self._download(SAFETENSORS_INDEX, ckpt.name).read_text())["weight_map"]
            shards = set(index.values())
            if purpose == "attention":
                shards = {f for k, f in index.items() if any(m in k for m in _ATTENTION_MARKERS)}
            for shard in sorted(shards):
                self._download(shard, ckpt.name)
        elif "model.safetensors" in files:
            self._download("model.safetensors", ckpt.name)
        elif self.allow_pickle and "pytorch_model.bin" in files:
            self._download("pytorch_model.bin", ckpt.name)
        return cfg.parent

    def tokenizer_dir(self) -> Path | None:
        self._ensure_reachable()
        from huggingface_hub import list_repo_files

        rev = self.checkpoints[-1].name
        files = set(list_repo_files(self.repo, revision=rev))
        got = [self._download(f, rev) for f in (*TOKENIZER_FILES, "special_tokens_map.json") if f in files]
        return got[0].parent if got else None

    def describe(self) -> dict:
        d = super().describe()
        d.update(repo=self.repo, revisions=[c.name for c in self.checkpoints])
        return d
