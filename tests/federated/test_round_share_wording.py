"""The federated job's log says how many clients take part in a round in words a reader takes right."""

from __future__ import annotations

from studio.federated.job import _share


def test_a_share_of_one_reads_as_every_client_not_one_client():
    assert _share(1.0) == "every client"  # was "1 of the clients per round"
    assert _share(0.5) == "50% of the clients"
