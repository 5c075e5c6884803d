"""The system-check job: a small real optimisation on the worker's device.

It fits a linear regression with SGD so the reported loss genuinely falls;
it goes through the same runner, reporter, cancellation and registry as a
training job, in a second or two.
"""

from __future__ import annotations

import time

from studio.errors import StudioError
from studio.jobs.context import JobContext
from studio.progress import Reporter
from studio.schema import CheckRequest


def run_check(request: CheckRequest, reporter: Reporter, ctx: JobContext) -> dict:
    """Run ``request.steps`` SGD steps, reporting loss each step; returns the final loss."""
    import torch

    device = torch.device(ctx.device.torch_device)
    generator = torch.Generator().manual_seed(request.seed)
    inputs = torch.randn(256, 16, generator=generator)
    true_weights = torch.randn(16, 1, generator=generator)
    targets = inputs @ true_weights
    inputs, targets = inputs.to(device), targets.to(device)
    weights = torch.zeros(16, 1, device=device, requires_grad=True)
    optimizer = torch.optim.SGD([weights], lr=0.1)
    reporter.log(f"system check on {ctx.device.label}, {request.steps} steps")
    loss_value = float("nan")
    for step in range(1, request.steps + 1):
        reporter.check_cancelled()
        if request.fail_at_step == step:
            raise StudioError(f"the system check was asked to fail at step {step}")
        loss = torch.nn.functional.mse_loss(inputs @ weights, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        loss_value = float(loss.detach())
        reporter.metrics(step, {"loss": loss_value})
        reporter.progress(step, request.steps)
        if request.step_seconds:
            time.sleep(request.step_seconds)
    return {"final_loss": loss_value, "device": ctx.device.label}
