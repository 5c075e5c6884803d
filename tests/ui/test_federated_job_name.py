"""A federated job's name in the Jobs list says its strategy, clients, rounds and dataset (it was "federated")."""

from __future__ import annotations

from app import tab_federated
from studio.schema import FederatedRequest
from studio.services.job_names import default_job_name
from ui.test_federated_tab import dataset  # noqa: F401 - the fixture: 30 colour rows with a warm/cool label


def test_a_queued_federated_job_is_named_after_its_setting(services, dataset):  # noqa: F811 - the imported fixture
    options = {"strategy": "ffa", "clients": 3, "split": "dirichlet", "alpha": 0.5, "rounds": 2}
    privacy = tab_federated.privacy_block(1.0, None, 1, 1e-5)
    tab_federated.submit(services, tab_federated.make_request(dataset.id, "tiny", options, privacy))
    [job] = services.jobs.list(kind="federated")
    assert (
        job.name == f"FFA-LoRA, 3 clients (dirichlet split) × 2 rounds on '{dataset.name}' (#{dataset.id}) with DP-SGD"
    )


def test_the_name_keeps_the_adapter_name_and_survives_a_missing_dataset(registry):
    request = FederatedRequest(dataset_id=99, base_model="tiny", strategy="flora", clients=1, rounds=1, name="mine")
    assert default_job_name(request, registry) == "FLoRA, 1 client (iid split) × 1 round on #99 → 'mine'"
