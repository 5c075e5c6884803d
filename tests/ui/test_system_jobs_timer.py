"""System tab: the recent-jobs table follows a system check on a timer (it stayed "queued" until Refresh)."""

from __future__ import annotations


def test_a_timer_rereads_the_jobs_table(services):
    from app import tab_system
    from app.main import build_app

    app = build_app(services)
    [tick] = [
        fn
        for fn in app.fns.values()
        if fn.name == "recent_jobs" and any(getattr(o, "elem_id", None) == "system-jobs" for o in fn.outputs)
    ]
    assert [event for _, event in tick.targets] == ["tick"]  # a timer's, not a button's
    tab_system.run_check(services, "token")
    [job] = services.jobs.list(kind="check")
    services.jobs.cancel(job.id)
    [rows] = tick.fn().values()
    assert rows[0][:3] == [job.id, "check", "cancelled"]
