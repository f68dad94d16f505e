"""serving.service_setup: what a server process does first when it opens its service."""

from __future__ import annotations

import pytest

from serving import service_setup
from serving.config import ServerConfig
from serving.store_url import Durability
from stores.durable import open_durable_memory
from stores.wal import WalError
from tests.builders import social_dataset


def test_a_state_directory_another_server_holds_is_refused_before_the_models_load(tmp_path, monkeypatch):
    state = tmp_path / "state"
    holder = open_durable_memory(social_dataset(), str(state), snapshot_seconds=0)

    def load_models(config):
        raise AssertionError("the models were loaded for a state directory another server holds")

    monkeypatch.setattr(service_setup, "load_models", load_models)
    config = ServerConfig(models_dir=str(tmp_path / "models"), data_dir=str(tmp_path / "data"), durability=Durability(str(state)))
    try:
        with pytest.raises(WalError, match=rf"^--state-dir {state} is in use by another process"):
            service_setup.open_service(config)
    finally:
        holder.close()
