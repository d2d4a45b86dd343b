"""`eval --report`: the result as one self-contained HTML page (no script, no outside resource). Every text
that came from a model or a data file is HTML-escaped: an answer is data, never markup. Pure."""

from __future__ import annotations

from html import escape
from typing import Any

TEXT_SHOWN = 2000  # characters of each answer on the page; the stored results keep it whole


def _pct(value: float) -> str:
    return f"{100 * value:.1f} %"


def _stack_section(stack: dict[str, Any]) -> str:
    m = stack["metrics"]
    low, high = m["ci95"]
    head = (
        f"<h2>{escape(str(stack['project']))}: {escape(str(stack['model']))} via {escape(str(stack['via']))}</h2>"
        f"<p>pass@1 <b>{_pct(m['pass@1'])}</b> (95 % CI {_pct(low)} – {_pct(high)}), {m['passed']} of "
        f"{m['samples']} passed; {m['cut_by_length']} cut by the token budget; {m['errors']} errors.</p>"
    )
    published = stack.get("published") or {}
    if published:
        cells = "".join(f"<li>{escape(k)}: {escape(str(v))}</li>" for k, v in published["figures"].items())
        head += f"<p>Published ({escape(published['source'])}):</p><ul>{cells}</ul>"
    rows = []
    for item in stack["outcomes"]:
        for i, o in enumerate(item["outcomes"]):
            verdict = "pass" if o["passed"] else "fail"
            answer = "" if o.get("answer") is None else escape(str(o["answer"]))
            rows.append(
                f"<tr class='{verdict}'><td>{escape(item['key'])}#{i}</td><td>{verdict}</td>"
                f"<td>{escape(str(o['reason']))}</td><td>{escape(str(o['finish_reason']))}</td><td>{answer}</td>"
                f"<td><pre>{escape(str(o.get('text', ''))[:TEXT_SHOWN])}</pre></td></tr>"
            )
    table = (
        "<table><tr><th>item</th><th>verdict</th><th>reason</th><th>finish</th><th>answer</th><th>text</th></tr>"
        + "".join(rows)
        + "</table>"
    )
    return head + table


def report_html(report: dict[str, Any]) -> str:
    title = f"deploykit eval: {report['data']['name']}"
    parts = [
        "<!doctype html><html><head><meta charset='utf-8'><title>",
        escape(title),
        "</title><style>body{font-family:sans-serif;margin:2em}table{border-collapse:collapse}"
        "td,th{border:1px solid #ccc;padding:2px 6px;vertical-align:top}pre{white-space:pre-wrap;margin:0}"
        ".pass td:nth-child(2){color:#060}.fail td:nth-child(2){color:#a00}</style></head><body><h1>",
        escape(title),
        "</h1>",
        f"<p>{escape(report['date'])} · {escape(report['command'])} · {report['data']['items']} items × "
        f"{report['samples']} samples</p>",
    ]
    comparison = report.get("compare")
    if comparison:
        verdict = "exceeds noise" if comparison["exceeds_noise"] else "within noise"
        parts.append(
            f"<p>Compared on {comparison['items']} items: difference {_pct(comparison['difference'])}, "
            f"{comparison['only_first']} passed only on the first, {comparison['only_second']} only on the second; "
            f"{escape(comparison['test'])} p = {comparison['p_value']:.3g}: {verdict}.</p>"
        )
    parts += [_stack_section(s) for s in report["stacks"]]
    parts.append("</body></html>\n")
    return "".join(parts)
