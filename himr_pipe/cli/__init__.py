"""The himr-pipe command line: one module per group of commands, on the group and option types of :mod:`.base`.

Exit codes: 0 done; 3 finished with some inputs skipped (each listed with its reason: encrypt-shards in the
manifest, predict on stderr); 1 the run failed or was interrupted (rerun the same command to resume); 2 refused
before any work (bad options, an unusable SRC, OUT or checkpoint). Errors are mapped to their line and code once,
in :class:`.base._Commands` (see :mod:`himr_pipe.errors`).
"""

from __future__ import annotations

from . import encrypt, owner, samples, train
from .base import main
from .encrypt import encrypt_shards_cmd, verify_cmd
from .owner import audit_cmd, decrypt_cmd, preview_cmd, tradeoff_cmd
from .samples import sample_data_cmd
from .train import predict_cmd, timm_train_cmd, train_cmd

__all__ = ["main", "encrypt_shards_cmd", "verify_cmd", "audit_cmd", "decrypt_cmd", "preview_cmd", "tradeoff_cmd",
           "sample_data_cmd", "predict_cmd", "timm_train_cmd", "train_cmd", "encrypt", "owner", "samples", "train"]
