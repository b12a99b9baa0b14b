"""Read a worker's durable state back from the state topic, as its operator could with the key file,
and build the offline core that reproduces its releases bit for bit.

Noise depends on each device's ledger lineage, a random value the worker draws and writes ahead to
the state topic (sealed with the key file's state key) before the device's first release: the
offline core needs those headers to draw the same noise.
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

from connectors.kafka import Topics, read_partition
from pipeline.privacy import PrivacyConfig, PrivacyEngine, PrivacyWarning, load_keys
from pipeline.processor import Processor
from pipeline.state import PartitionState, StateCipher, load_partition


def read_state(bootstrap: str, topics: Topics, key_file: Path, partitions: int = 3) -> list[PartitionState]:
    """Every state partition, opened with the key file's state key."""
    cipher = StateCipher(load_keys(key_file))
    return [
        load_partition(((k, v) for k, v, _o in read_partition(bootstrap, topics.state, p)), cipher)
        for p in range(partitions)
    ]


def offline_core(bootstrap: str, topics: Topics, key_file: Path, config: Path | None = None) -> Processor:
    """The processing core with the worker's keys, configuration and device headers (lineages)."""
    keys = load_keys(key_file)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", PrivacyWarning)  # default w-event budget on medical features
        cfg = PrivacyConfig.from_file(config) if config is not None else PrivacyConfig.default()
    engine = PrivacyEngine(cfg, keys)
    for ps in read_state(bootstrap, topics, key_file):
        for device, header in ps.headers.items():
            engine.set_header(device, header)
    return Processor(engine, keys.pseudonym)


def ledgers(bootstrap: str, topics: Topics, key_file: Path) -> dict[str, dict[str, Any]]:
    """The durable ledger slice of every device."""
    out: dict[str, dict[str, Any]] = {}
    for ps in read_state(bootstrap, topics, key_file):
        out.update(ps.devices)
    return out
