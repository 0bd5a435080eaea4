"""The web UI's eval pages: the list of evals, one eval's comparison page, one task across models.

    /evals                         every eval: models, tasks, k, episodes
    /evals/{id}                    models side by side per environment (the stored report: scores
                                   with 95% CIs, paired differences), and the per-task outcomes of
                                   two models (?env=&a=&b=&sort=disagree|task), each sample a link
    /evals/{id}/task?env=&task=    one task: its prompt, then every model's samples side by side,
                                   each with the call that decided it first, then its condensed
                                   conversation, linking to its full rollout
    /api/evals, /api/evals/{id}, /api/evals/{id}/tasks?env=

Every page names what each model is (kind, target, served model, checkpoint, tokenizer:
`model_summary` of its stored identity). The statistics come from the report
`python -m tools.eval` stored with the eval (this page computes none); the per-task outcomes are
read live, so a running eval shows its progress. A sample is drawn solved, partial (some reward,
not solved), unsolved or failed.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import HTMLResponse, JSONResponse

from envs.trajectories.errors import ApiReason
from envs.trajectories.evals import EpisodeRow, EvalRecords, model_summary
from envs.trajectories.store import TrajectoryStore
from envs.trajectories.webui import CSP, _templates, conversation

EvalId = Annotated[int, Path(ge=1, le=2**63 - 1)]
"""An eval's row id as a path parameter: SQLite's rowid range (outside it: 422, never a 500)."""

__all__ = ["eval_api_router", "eval_pages_router"]

MAX_TASK_ROWS = 1000
CONVERSATION_TYPES = ("assistant_message", "tool_call", "tool_result")
MAX_TASK_PAGE_CHARS = 400_000
"""Message text read per sample for the task page (its rollout page shows the rest)."""


def deciding_call(messages: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The call that decided an episode: the one whose result ended it, else the last rewarded
    one; with its arguments, result and reward (None when no call got a result)."""
    results = [m for m in messages if m.get("type") == "tool_result"]
    result = next((m for m in results if m.get("is_finished")), None)
    if result is None:
        result = next((m for m in reversed(results) if m.get("reward") is not None), None)
    if result is None:
        return None
    call = next(
        (
            m
            for m in messages
            if m.get("type") == "tool_call" and m.get("call_id") == result.get("call_id")
        ),
        {},
    )
    return {
        "name": call.get("name") or (result.get("metadata") or {}).get("tool") or "?",
        "args": call.get("args") or call.get("content") or "",
        "result": result.get("content") or "",
        "reward": result.get("reward"),
        "finished": bool(result.get("is_finished")),
    }


def _outcomes(
    rows: list[EpisodeRow], models: list[str]
) -> tuple[list[str], dict[str, dict[str, list[EpisodeRow]]]]:
    """(task keys in order, task -> model -> its samples)."""
    by_task: dict[str, dict[str, list[EpisodeRow]]] = defaultdict(lambda: defaultdict(list))
    order: list[str] = []
    for r in rows:
        if r.model not in models:
            continue
        if r.task not in by_task:
            order.append(r.task)
        by_task[r.task][r.model].append(r)
    return order, by_task


def _mean(samples: list[EpisodeRow]) -> float | None:
    return sum(s.reward for s in samples) / len(samples) if samples else None


def task_table(
    rows: list[EpisodeRow], models: list[str], a: str, b: str, sort: str
) -> list[dict[str, Any]]:
    """Per task: each model's samples and mean reward, and B - A; sorted by |B - A| or task
    order."""
    order, by_task = _outcomes(rows, models)
    out: list[dict[str, Any]] = []
    for i, task in enumerate(order):
        per = by_task[task]
        ma, mb = _mean(per.get(a, [])), _mean(per.get(b, []))
        diff = mb - ma if ma is not None and mb is not None else None
        out.append(
            {
                "task": task,
                "order": i,
                "models": {
                    m: {"mean": _mean(per.get(m, [])), "samples": per.get(m, [])} for m in models
                },
                "diff": diff,
            }
        )
    if sort == "disagree":
        out.sort(key=lambda t: (-(abs(t["diff"]) if t["diff"] is not None else -1), t["order"]))
    return out[:MAX_TASK_ROWS]


def _pick(value: str | None, choices: list[str], default: str | None) -> str | None:
    return value if value in choices else default


def eval_pages_router(store: TrajectoryStore) -> APIRouter:
    """Routes of the eval pages."""
    router = APIRouter(include_in_schema=False)
    templates = _templates()
    records = EvalRecords(store)

    def page(name: str, status: int = 200, **ctx: Any) -> HTMLResponse:
        body = templates.get_template(name).render(**ctx)
        return HTMLResponse(
            body,
            status_code=status,
            headers={"Content-Security-Policy": CSP, "X-Content-Type-Options": "nosniff"},
        )

    def not_found(what: str) -> HTMLResponse:
        return page("error.html", status=404, title="Not found", message=what)

    @router.get("/evals", response_class=HTMLResponse)
    def evals_page() -> HTMLResponse:
        return page("evals.html", title="Evals", evals=records.list_evals())

    @router.get("/evals/{eval_id}", response_class=HTMLResponse)
    def eval_page(request: Request, eval_id: EvalId) -> HTMLResponse:
        ev = records.get(eval_id)
        if ev is None:
            return not_found(f"No eval with id {eval_id}.")
        models = [m.name for m in ev["models"]]
        envs = records.envs(eval_id)
        q = request.query_params
        env = _pick(q.get("env"), envs, envs[0] if envs else None)
        a = _pick(q.get("a"), models, models[0] if models else None)
        b = _pick(q.get("b"), models, models[1] if len(models) > 1 else a)
        sort = "task" if q.get("sort") == "task" else "disagree"
        shown = list(dict.fromkeys(m for m in (a, b) if m))
        rows = records.episodes(eval_id, env) if env else []
        report = ev["report"]
        return page(
            "eval.html",
            title=f"Eval {ev['name']}",
            ev=ev,
            report=report,
            models=models,
            runs={m.name: store.run_id_by_name(m.run_name) for m in ev["models"]},
            info={m.name: model_summary(m.endpoint) for m in ev["models"]},
            envs=envs,
            env=env,
            a=a,
            b=b,
            sort=sort,
            shown=shown,
            tasks=task_table(rows, shown, a or "", b or "", sort),
            stale=report is not None and set(report.get("models", [])) != set(models),
        )

    @router.get("/evals/{eval_id}/task", response_class=HTMLResponse)
    def task_page(request: Request, eval_id: EvalId) -> HTMLResponse:
        ev = records.get(eval_id)
        if ev is None:
            return not_found(f"No eval with id {eval_id}.")
        env, task = request.query_params.get("env", ""), request.query_params.get("task", "")
        rows = [r for r in records.episodes(eval_id, env) if r.task == task]
        if not rows:
            return not_found(f"Eval {ev['name']} has no episodes of task {env} {task}.")
        columns = []
        prompt = None
        per_sample = MAX_TASK_PAGE_CHARS // max(1, len(rows))
        for m in ev["models"]:
            for r in sorted((r for r in rows if r.model == m.name), key=lambda r: r.sample):
                msgs = conversation(store.messages(r.rollout_event_id, max_chars=per_sample))
                if prompt is None:
                    prompt = next((x["content"] for x in msgs if x["type"] == "user_message"), None)
                columns.append(
                    {
                        "row": r,
                        "deciding": deciding_call(msgs),
                        "conversation": [x for x in msgs if x["type"] in CONVERSATION_TYPES],
                    }
                )
        return page(
            "eval_task.html",
            title=f"{env} {task}",
            ev=ev,
            env=env,
            task=task,
            prompt=prompt,
            columns=columns,
            info={m.name: model_summary(m.endpoint) for m in ev["models"]},
        )

    return router


def eval_api_router(store: TrajectoryStore) -> APIRouter:
    """JSON routes of the eval data, under /api."""
    router = APIRouter(prefix="/api", tags=["evals"])
    records = EvalRecords(store)

    @router.get("/evals")
    def evals() -> JSONResponse:
        return JSONResponse({"evals": records.list_evals()})

    @router.get("/evals/{eval_id}")
    def one(eval_id: EvalId) -> JSONResponse:
        ev = records.get(eval_id)
        if ev is None:
            return JSONResponse(
                {"ok": False, "error": f"no eval with id {eval_id}", "reason": ApiReason.NOT_FOUND},
                status_code=404,
            )
        ev["models"] = [m.__dict__ for m in ev["models"]]
        return JSONResponse(ev)

    @router.get("/evals/{eval_id}/tasks")
    def tasks(eval_id: EvalId, env: str | None = None) -> JSONResponse:
        return JSONResponse({"episodes": [r.__dict__ for r in records.episodes(eval_id, env)]})

    return router
