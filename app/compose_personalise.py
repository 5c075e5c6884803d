"""Compose tab, RecLoRA section: a dataset, its user column and the PersonaliseRequest settings → a ``personalise``
job; for a finished bundle, a paged and searchable user list, the learned gates α(u) as a users × K heatmap,
and one user's adapter as a standard PEFT LoRA zip (:meth:`PersonalisedService.user_zip`).

The user column is one of the uploaded file's columns (:func:`studio.composition.reclora_data.dataset_columns`,
as the job service checks it): the stored canonical rows no longer carry it.
"""

from __future__ import annotations

import math
from typing import Any

import gradio as gr
from pydantic import ValidationError

from app.compose_errors import FormErrors, field_errors, form_error_updates, widget_error
from app.forms import SchemaForm
from app.tab_datasets import dataset_choices
from app.tab_train import base_model_choices
from app.ui import PICKER_LIMIT, bind, bind_submit, new_submission_token, queue_wait_sentence
from studio.schema import AdapterFilters, PersonaliseRequest
from studio.services.container import Services

FORM_FIELDS = (
    "n_meta",
    "rank",
    "lora_alpha",
    "gate_dim",
    "steps",
    "batch_size",
    "learning_rate",
    "max_length",
    "loss_on",
    "target_modules",
    "user_features_path",
    "name",
    "seed",
)
USERS_PAGE = 25
TOP_INFO = {
    "dataset_id": "A dataset whose uploaded file has a column naming each row's user.",
    "user_column": "The column naming each row's user (customer, persona, author): the uploaded file's columns.",
    "base_model": "The model the meta-LoRAs are trained for.",
}
NEEDS_FIXING = "⚠ Some settings need fixing: see the highlighted fields."


def column_choices(services: Services, dataset_id: Any) -> list[str]:
    """The columns of the dataset's uploaded file (where the user column is looked for); [] when none is chosen."""
    from studio.composition.reclora_data import dataset_columns

    if not dataset_id:
        return []
    return dataset_columns(services.datasets.get(int(dataset_id)))


def bundle_choices(services: Services) -> list[tuple[str, int]]:
    """The newest personalised (RecLoRA) adapters, with their user count."""
    rows, _ = services.adapters.page(AdapterFilters(variant="reclora"), limit=PICKER_LIMIT)
    return [(f"#{r.id} {r.name} ({int((r.metrics or {}).get('reclora_users', 0))} users)", r.id) for r in rows]


def build_personalise_request(
    services: Services, dataset_id: Any, user_column: str | None, base_model: str | None, options: dict[str, Any]
) -> PersonaliseRequest:
    """Validate the form as the job service will (the user column against the dataset's columns); FormErrors."""
    from studio.schema import DATASET_COLUMNS

    errors: dict[str, str] = {}
    columns = None
    if not dataset_id:
        errors["dataset_id"] = "Choose a dataset (add one in the Datasets tab)."
    else:
        columns = column_choices(services, dataset_id)
    if not user_column:
        errors["user_column"] = "Choose the column that names each row's user."
    if not (base_model or "").strip():
        errors["base_model"] = "Choose a base model."
    data = {
        "dataset_id": int(dataset_id or 1),
        "user_column": user_column or "user",
        "base_model": (base_model or "").strip() or "x",
        **options,
    }
    data["name"] = (data.get("name") or "").strip() or None
    data["user_features_path"] = (data.get("user_features_path") or "").strip() or None
    context = {DATASET_COLUMNS: columns} if columns is not None and user_column else None
    try:
        request = PersonaliseRequest.model_validate(data, context=context)
    except ValidationError as exc:
        for key, message in field_errors(exc).items():
            errors.setdefault(key, message)
        request = None
    if errors or request is None:
        raise FormErrors(errors or {"request": "invalid"})
    return request


def submit_personalise(services: Services, request: PersonaliseRequest, submission_token: str | None = None) -> str:
    """Queue the job; a confirmation line."""
    job = services.jobs.submit(request, submission_token=submission_token)
    return (
        f"Queued personalise job #{job.id} (K={request.n_meta} meta-LoRAs of rank {request.rank}, users from "
        f"column {request.user_column!r}); follow it in the Jobs tab, then pick the adapter below."
        f"{queue_wait_sentence(job)}"
    )


def user_page(services: Services, bundle_id: Any, search: str | None, page: Any) -> dict[str, Any]:
    """One page of the bundle's users (search: ids containing it), its gates heatmap, the page line and the page
    shown (a page number past the last one shows the last page)."""
    from studio.charts import empty_figure
    from studio.composition.reclora_charts import gate_heatmap

    if not bundle_id:
        return {"users": [], "page_info": "", "gates": empty_figure("Pick a personalised adapter first."), "page": 1}
    pages_at = max(1, int(page or 1))
    users, total = _users_at(services, int(bundle_id), search, pages_at)
    pages = max(1, math.ceil(total / USERS_PAGE))
    if pages_at > pages:  # e.g. 9 typed in the Page box, or a new search with fewer matches: not an empty page
        pages_at = pages
        users, total = _users_at(services, int(bundle_id), search, pages_at)
    alpha = services.personalised.gates(int(bundle_id), users)
    title = f"Learned gates α(u) of #{bundle_id}, page {pages_at} of {pages}"
    info = f"{total} user(s) match · page {pages_at} of {pages}" if total else "No user matches."
    return {"users": users, "page_info": info, "gates": gate_heatmap(users, alpha, title=title), "page": pages_at}


def _users_at(services: Services, bundle_id: int, search: str | None, page: int) -> tuple[list[str], int]:
    """The user ids on ``page`` (from 1) of the bundle's users matching ``search``, and how many match."""
    return services.personalised.users(bundle_id, (search or "").strip(), (page - 1) * USERS_PAGE, USERS_PAGE)


def user_download(services: Services, bundle_id: Any, user: str | None) -> str:
    """The path of the zip of ``user``'s standard PEFT LoRA (an empty user: the mean gate)."""
    from studio.errors import ValidationFailed

    if not bundle_id:
        raise ValidationFailed("Pick a personalised adapter first.")
    return str(services.personalised.user_zip(int(bundle_id), (user or "").strip() or None))


def build_section(services: Services, tab: gr.Tab) -> None:
    """Lay out the RecLoRA section and wire its events."""
    from app.tab_adapters import DOWNLOAD_NOW_JS, checksum_line

    c: dict[str, Any] = {}
    gr.Markdown(
        "### Personalised adapters (RecLoRA)\n"
        "For a dataset whose rows name their user (a customer, a persona, an author): train **K shared "
        "meta-LoRAs** and a gate that gives every user their own mix of them. Any user's adapter downloads as a "
        "standard PEFT LoRA of rank K·r; the Playground and `/v1` (its `user` field) answer per user; an unknown "
        "user gets the mean gate.",
        elem_id="reclora-intro",
    )
    with gr.Row():
        c["dataset_id"] = gr.Dropdown(
            label="Dataset", choices=[], info=TOP_INFO["dataset_id"], elem_id="reclora-dataset"
        )
        c["user_column"] = gr.Dropdown(
            label="User column", choices=[], info=TOP_INFO["user_column"], elem_id="reclora-user-column"
        )
        c["base_model"] = gr.Dropdown(
            label="Base model",
            choices=base_model_choices(services),
            value=services.settings.default_base_model,
            allow_custom_value=True,
            info=TOP_INFO["base_model"],
            elem_id="reclora-base",
        )
    with gr.Row(elem_classes=["form-grid"]):
        form = SchemaForm(PersonaliseRequest.model_json_schema(), "reclora", only=FORM_FIELDS)
    c["submit"] = gr.Button("Train personalised adapters", variant="primary", elem_id="reclora-submit")
    c["status"] = gr.Markdown(elem_id="reclora-status")
    c["submission_token"] = gr.State(new_submission_token)
    gr.Markdown("#### Users of a personalised adapter")
    with gr.Row():
        c["bundle"] = gr.Dropdown(label="Personalised adapter", choices=[], elem_id="reclora-bundle", scale=3)
        c["search"] = gr.Textbox(
            label="Search users", placeholder="part of a user id", elem_id="reclora-search", scale=3
        )
        c["page"] = gr.Number(label="Page", value=1, precision=0, minimum=1, elem_id="reclora-page", scale=1)
    c["page_info"] = gr.Markdown(elem_id="reclora-page-info")
    with gr.Row(equal_height=False):
        with gr.Column(scale=2, min_width=260):
            c["user"] = gr.Dropdown(
                label="User",
                choices=[],
                allow_custom_value=True,
                info="The users of this page; type any id (unknown: the mean gate).",
                elem_id="reclora-user",
            )
            c["download"] = gr.DownloadButton("Download this user's adapter", elem_id="reclora-download")
            c["download_sha"] = gr.Markdown("", elem_id="reclora-download-sha256")
        with gr.Column(scale=5, min_width=320):
            c["gates"] = gr.Plot(label="Learned gates α(u)", elem_id="reclora-gates")

    form_in = {f"opt.{n}": w for n, w in form.widgets.items()}
    top_in = {k: c[k] for k in ("dataset_id", "user_column", "base_model")}

    def feedback(errors: dict[str, str]) -> dict[str, Any]:
        out = form_error_updates(form, "opt", errors)
        return out | {k: widget_error(errors.get(k), TOP_INFO[k]) for k in TOP_INFO}

    def on_submit(dataset_id, user_column, base_model, submission_token=None, **raw: Any) -> dict[str, Any]:
        options = form.values([raw[f"opt.{n}"] for n in form.names])
        try:
            request = build_personalise_request(services, dataset_id, user_column, base_model, options)
        except FormErrors as exc:
            return {"status": NEEDS_FIXING, **feedback(exc.errors)}
        line = submit_personalise(services, request, submission_token)
        return {"status": f"✓ {line}", "bundle": gr.update(choices=bundle_choices(services)), **feedback({})}

    def on_dataset(dataset_id) -> dict[str, Any]:
        columns = column_choices(services, dataset_id)
        guess = next((col for col in columns if col.lower() in ("user", "user_id", "persona", "author")), None)
        return {"user_column": gr.update(choices=columns, value=guess)}

    def on_users(bundle, search, page) -> dict[str, Any]:
        shown = user_page(services, bundle, search, page)
        users = shown.pop("users")
        return shown | {"user": gr.update(choices=users, value=users[0] if users else None)}

    def on_search(bundle, search) -> dict[str, Any]:
        return on_users(bundle, search, 1)

    def on_download(bundle, user) -> dict[str, Any]:
        path = user_download(services, bundle, user)
        return {"download": gr.update(value=path), "download_sha": checksum_line(path, "User adapter zip")}

    def on_tab() -> dict[str, Any]:
        return {
            "dataset_id": gr.update(choices=dataset_choices(services)),
            "base_model": gr.update(choices=base_model_choices(services)),
            "bundle": gr.update(choices=bundle_choices(services)),
        }

    submit_out = {"status": c["status"], "bundle": c["bundle"]} | form_in | top_in
    bind_submit(c["submit"], on_submit, top_in | form_in, submit_out, "status", c["submission_token"])
    bind(c["dataset_id"].change, on_dataset, {"dataset_id": c["dataset_id"]}, {"user_column": c["user_column"]})
    page_out = {k: c[k] for k in ("page_info", "gates", "user", "status")}
    page_in = {k: c[k] for k in ("bundle", "search", "page")}
    bind(
        c["bundle"].change, on_search, {k: c[k] for k in ("bundle", "search")}, page_out | {"page": c["page"]}, "status"
    )
    bind(
        c["search"].submit, on_search, {k: c[k] for k in ("bundle", "search")}, page_out | {"page": c["page"]}, "status"
    )
    # The Page box is an output too: a number past the last page turns into the last page's number.
    bind(c["page"].input, on_users, page_in, page_out | {"page": c["page"]}, "status")
    # An empty button only reports the click: make the zip, have the browser fetch it, then empty the button
    # again so the next click (maybe for another user) makes a fresh zip.
    made = bind(
        c["download"].click,
        on_download,
        {"bundle": c["bundle"], "user": c["user"]},
        {"download": c["download"], "download_sha": c["download_sha"], "status": c["status"]},
        "status",
    )
    made.success(None, inputs=[c["download"]], outputs=None, js=DOWNLOAD_NOW_JS).then(
        lambda: gr.update(value=None), inputs=None, outputs=[c["download"]]
    )
    bind(tab.select, on_tab, {}, {k: c[k] for k in ("dataset_id", "base_model", "bundle")})
