"""Reading a grok run's safetensors files with one named fault for a damaged file, and the recovery that
fault names. A leaf module: the trainer's snapshots (headscreen.grokking.training.snapshots), the analysis and the
run lifecycle (headscreen.grokking.training.lifecycle) all read through it.
"""

from __future__ import annotations

from pathlib import Path

from headscreen.rundir.atomic import StoreError


class GrokRunError(StoreError):
    """A grok run's user-facing fault (one line, exit 2 in the CLI)."""


class DamagedRunFile(GrokRunError):
    """A file of the run cannot be read (truncated or corrupted outside headscreen's atomic writes)."""


# --- reading files of a run -----------------------------------------------------------------------
def read_safetensors(path: Path, fix: str):
    """`safetensors.torch.load_file(path)`, or `DamagedRunFile` naming the file and `fix`."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except FileNotFoundError:
        raise DamagedRunFile(f"{path} is missing; {fix}") from None
    except Exception as e:  # noqa: BLE001 - SafetensorError, a bad header, a short read: one named fault
        raise DamagedRunFile(f"{path} cannot be read ({' '.join(str(e).split())[:120]}); {fix}") from None


def restart_fix(run: Path) -> str:
    return (f"the run cannot resume exactly from it: rerun the same `headscreen grok` command with --force to "
            f"retrain {run} from step 0 (a resume needs the optimizer state of its last snapshot, which only "
            "resume.safetensors holds)")
