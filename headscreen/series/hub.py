"""A series on the Hugging Face hub: a repository plus a revision schedule kept as data.

Every file goes through `huggingface_hub` (`snapshot_download` with `revision=` and `allow_patterns`),
into the standard cache (`HF_HOME` / `HF_HUB_CACHE`, or `cache_dir`), from `HF_ENDPOINT` (or `endpoint`).
Only what a purpose needs is downloaded: `config.json` and the safetensors index first; then the
shards that hold attention tensors (purpose "attention", the weight pass) or every shard (purpose
"full", to boot a model for the probes); the tokenizer files once, from the last revision.

Before the first download one API call (`model_info`, short timeout) checks that the hub answers and
that the repository and revision exist; no raw socket is opened. When the hub cannot be reached
(`HF_HUB_OFFLINE` set, no network, a dead `HF_ENDPOINT`) the cache is used when it already holds the
files; otherwise `HubUnavailable` names the repository, the revision and how to use a local copy.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from headscreen.series.base import TOKENIZER_FILES, Checkpoint, Series
from headscreen.series.errors import CheckpointNotFound, DownloadInterrupted, HubUnavailable, NoWeightsError
from headscreen.series.schedules import Revision
from headscreen.series.tensors import SAFETENSORS_INDEX

CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
PICKLE_FILE = "pytorch_model.bin"
TOKENIZER_PATTERNS = (*TOKENIZER_FILES, "special_tokens_map.json", "merges.txt", "added_tokens.json")
#: a tensor name holding one of these belongs to an attention block (a superset: norms next to attention too)
ATTENTION_MARKERS = ("attn", "attention")
REACH_TIMEOUT_S = 5.0


def hub_offline() -> bool:
    """Whether the user put huggingface_hub in offline mode (`HF_HUB_OFFLINE`, read now and at import)."""
    from huggingface_hub import constants

    return constants.is_offline_mode() or os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in ("1", "ON", "YES", "TRUE")


def hub_endpoint(endpoint: str | None = None) -> str:
    """`endpoint`, else HF_ENDPOINT (read now, so a change after import counts), else huggingface_hub's."""
    from huggingface_hub import constants

    return (endpoint or os.environ.get("HF_ENDPOINT") or constants.ENDPOINT).rstrip("/")


def hub_problem(repo: str, revision: str, *, endpoint: str | None = None,
                timeout: float = REACH_TIMEOUT_S) -> str | None:
    """None when the hub answers for `repo` at `revision`, else why it cannot be used.

    One `model_info` call through huggingface_hub (it honors HF_ENDPOINT, proxies and tokens).
    Raises `CheckpointNotFound` when the hub answers that the repository or revision does not exist.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    url = hub_endpoint(endpoint)
    if hub_offline():
        return "HF_HUB_OFFLINE is set"
    try:
        HfApi(endpoint=url).model_info(repo, revision=revision, timeout=timeout)
    except (RevisionNotFoundError, RepositoryNotFoundError) as e:
        raise not_found(e, repo, revision, url) from e
    except HfHubHTTPError as e:
        status = e.response.status_code if e.response is not None else "?"
        return f"{url} answered HTTP {status}"
    except Exception as e:  # connection refused, DNS failure, timeout: httpx errors, OSError
        return f"cannot connect to {url} ({type(e).__name__}: {e})"
    return None


def not_found(e: Exception, repo: str, revision: str, url: str) -> CheckpointNotFound:
    """The error for a hub answer that the repository or revision does not exist."""
    from huggingface_hub.errors import RevisionNotFoundError

    if isinstance(e, RevisionNotFoundError):
        return CheckpointNotFound(
            f"{url} has no revision {revision!r} of {repo}; list the published ones with "
            f"`huggingface_hub.list_repo_refs({repo!r})` and fix the config's revision_format/schedule"
        )
    return CheckpointNotFound(
        f"{url} has no model repository {repo!r} (or it is private/gated: log in with `hf auth login`)"
    )


def _silent_tqdm():
    """A tqdm class that shows nothing, for huggingface_hub's bars on small metadata fetches."""
    from tqdm.auto import tqdm

    class Silent(tqdm):
        def __init__(self, *args, **kwargs):
            kwargs["disable"] = True
            super().__init__(*args, **kwargs)

    return Silent


def _is_transport_error(e: BaseException) -> bool:
    """A connection dropped or timed out under huggingface_hub (httpx, requests or the socket itself)."""
    if isinstance(e, ConnectionError | TimeoutError):
        return True
    return any(c.__module__.split(".")[0] in ("httpx", "httpx2", "httpcore", "requests", "urllib3", "http")
               and c.__name__.endswith(("ProtocolError", "ConnectError", "ReadError", "TimeoutException",
                                        "ReadTimeout", "ConnectionError", "ChunkedEncodingError", "NetworkError",
                                        "TransportError", "IncompleteRead"))
               for c in type(e).__mro__)


def attention_shards(weight_map: dict[str, str], purpose: str) -> list[str]:
    """The shard files of a safetensors index that a purpose needs: those holding attention tensors, or all."""
    if purpose == "full":
        return sorted(set(weight_map.values()))
    if purpose != "attention":
        raise ValueError(f"purpose must be 'attention' or 'full', got {purpose!r}")
    return sorted({f for k, f in weight_map.items() if any(m in k for m in ATTENTION_MARKERS)})


class HubSeries(Series):
    source_kind = "hub"

    def __init__(self, repo: str, revisions: list[Revision], *, cache_dir: str | Path | None = None,
                 endpoint: str | None = None, allow_pickle: bool = False, trust_remote_code: bool = False,
                 config_name: str | None = None):
        self.repo = repo
        self.config_name = config_name  # the model config naming this series, for messages
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.endpoint = endpoint
        self._problem: str | None = None  # why the hub cannot be used (None: it answered)
        self._hub_asked = False
        self._folders: dict[tuple[str, str], Path] = {}
        #: how the config's schedule compares with the hub's branches (headscreen.series.hub_refs), set by
        #: config_series when the hub answered; None otherwise
        self.hub_reconcile: dict | None = None
        self._tokenizer: tuple[Path | None] | None = None
        ckpts = [Checkpoint(r.step, r.tokens, r.revision) for r in revisions]
        super().__init__(repo, ckpts, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)

    # --- downloads -------------------------------------------------------------------------
    def _check(self, revision: str) -> None:
        if not self._hub_asked:
            self._problem = hub_problem(self.repo, revision, endpoint=self.endpoint)
            self._hub_asked = True

    def _fetch(self, revision: str, patterns: list[str], *, progress: bool = False) -> Path:
        """The cache snapshot of `revision` holding (at least) the files matching `patterns`.
        progress: huggingface_hub's download bars (for weights; metadata fetches stay quiet)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import (
            HfHubHTTPError,
            LocalEntryNotFoundError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )

        self._check(revision)
        try:
            path = snapshot_download(
                self.repo, revision=revision, allow_patterns=patterns, cache_dir=self.cache_dir,
                endpoint=hub_endpoint(self.endpoint), local_files_only=self._problem is not None,
                **({} if progress else {"tqdm_class": _silent_tqdm()}),
            )
        except LocalEntryNotFoundError as e:
            raise HubUnavailable(self._unavailable(revision)) from e
        except (RevisionNotFoundError, RepositoryNotFoundError) as e:  # e.g. a later revision of the schedule
            raise not_found(e, self.repo, revision, hub_endpoint(self.endpoint)) from e
        except HfHubHTTPError as e:
            self._problem = f"{hub_endpoint(self.endpoint)} answered {e}"
            raise HubUnavailable(self._unavailable(revision)) from e
        except Exception as e:
            if not _is_transport_error(e):
                raise
            raise DownloadInterrupted(self._interrupted(revision, patterns, e)) from e
        return Path(path)

    def _interrupted(self, revision: str, patterns: list[str], e: BaseException) -> str:
        """The one line for a download cut off mid-file: repo, revision, the file(s) not in the cache."""
        from huggingface_hub import try_to_load_from_cache

        unfinished = [p for p in patterns if "*" not in p and not isinstance(
            try_to_load_from_cache(self.repo, p, cache_dir=self.cache_dir, revision=revision), str)]
        what = (f"{unfinished[0]}" + (f" (and {len(unfinished) - 1} more file(s))" if len(unfinished) > 1 else "")
                if unfinished else "a file")
        return (f"the download of {what} from {self.repo} at revision {revision!r} ({hub_endpoint(self.endpoint)}) "
                f"was cut off ({type(e).__name__}: {' '.join(str(e).split())}); rerun the same command: the files "
                "already downloaded are kept in the cache and the rest is fetched again")

    def _unavailable(self, revision: str) -> str:
        from huggingface_hub import constants

        cache = self.cache_dir or constants.HF_HUB_CACHE
        reach = ("unset HF_HUB_OFFLINE" if hub_offline() else
                 f"check the network or HF_ENDPOINT (now {hub_endpoint(self.endpoint)})")
        config = self.config_name or "<model config>"
        return (
            f"cannot download {self.repo} at revision {revision!r}: {self._problem or 'the hub did not answer'}, "
            f"and the cache ({cache}) does not hold it. Either reach the hub ({reach}), or use a local copy: on "
            f"a machine with network run `hf download {self.repo} --revision {revision} --local-dir "
            f"DIR/{revision}` for each revision of the config's schedule, copy DIR here (tokenizer files at its "
            f"root), then `headscreen screen DIR --config {config} --out ...` (or set source.local_path: DIR "
            "in the config)."
        )

    def availability(self) -> dict:
        """Where the revisions can come from, asking the hub once (no downloads): `hub` is None when it
        answers for the first revision, else why not; `cached` lists the revisions whose config.json is
        already in the local cache; `cache` is that cache's folder."""
        from huggingface_hub import constants, try_to_load_from_cache

        first = self.checkpoints[0].name
        try:
            self._check(first)
        except CheckpointNotFound as e:  # the hub answered that it has no such repo/revision
            self._problem = str(e)
        cached = [c.name for c in self.checkpoints
                  if isinstance(try_to_load_from_cache(self.repo, CONFIG, cache_dir=self.cache_dir, revision=c.name), str)]
        return {"hub": self._problem, "endpoint": hub_endpoint(self.endpoint), "cached": cached,
                "cache": str(self.cache_dir or constants.HF_HUB_CACHE)}

    def folder(self, ckpt: Checkpoint, purpose: str = "attention") -> Path:
        """A cache snapshot of `ckpt` with config.json and the weights `purpose` needs."""
        for p in ("full", purpose):  # a full download serves the attention purpose too
            if (ckpt.name, p) in self._folders:
                return self._folders[(ckpt.name, p)]
        meta = self._fetch(ckpt.name, [CONFIG, SAFETENSORS_INDEX])
        if not (meta / CONFIG).exists():
            raise NoWeightsError(f"{self.repo} at revision {ckpt.name!r} has no {CONFIG}")
        if (meta / SAFETENSORS_INDEX).exists():
            weight_map = json.loads((meta / SAFETENSORS_INDEX).read_text())["weight_map"]
            shards = attention_shards(weight_map, purpose)
            path = self._fetch(ckpt.name, [CONFIG, SAFETENSORS_INDEX, *shards], progress=True)
        else:
            path = self._fetch(ckpt.name, [CONFIG, SINGLE_FILE], progress=True)
            if not (path / SINGLE_FILE).exists() and self.allow_pickle:
                path = self._fetch(ckpt.name, [CONFIG, PICKLE_FILE], progress=True)
            if not any((path / f).exists() for f in (SINGLE_FILE, PICKLE_FILE)):
                raise NoWeightsError(
                    f"{self.repo} at revision {ckpt.name!r} has neither {SAFETENSORS_INDEX} nor {SINGLE_FILE}"
                    + ("" if self.allow_pickle else f"; if it holds {PICKLE_FILE}, pass --allow-pickle"))
        self._folders[(ckpt.name, purpose)] = path
        return path

    def hf_config(self, ckpt: Checkpoint) -> dict:
        have = [f for (name, _), f in self._folders.items() if name == ckpt.name]
        cfg = (have[0] if have else self._fetch(ckpt.name, [CONFIG])) / CONFIG
        if not cfg.exists():
            raise NoWeightsError(f"{self.repo} at revision {ckpt.name!r} has no {CONFIG}")
        return json.loads(cfg.read_text())

    def tokenizer_dir(self) -> Path | None:
        from headscreen.series.base import has_tokenizer

        if self._tokenizer is None:
            path = self._fetch(self.checkpoints[-1].name, list(TOKENIZER_PATTERNS))
            self._tokenizer = (path if has_tokenizer(path) else None,)
        return self._tokenizer[0]

    @classmethod
    def from_description(cls, desc: dict, *, trust_remote_code: bool = False) -> HubSeries:
        """The series a run manifest's `series` entry describes (repo, steps, revisions), read from the
        hub and cache that huggingface_hub is configured for now (HF_ENDPOINT, HF_HOME). Remote code
        comes from the caller's flag only, never from the description."""
        revs = [Revision(int(s), str(r), None) for s, r in zip(desc["steps"], desc["revisions"], strict=True)]
        return cls(desc["repo"], revs, allow_pickle=bool(desc.get("allow_pickle", False)),
                   trust_remote_code=trust_remote_code)

    def describe(self) -> dict:
        d = super().describe()
        d.update(repo=self.repo, revisions=[c.name for c in self.checkpoints], endpoint=hub_endpoint(self.endpoint))
        return d
