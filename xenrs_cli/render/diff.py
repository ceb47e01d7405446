"""Table view of ``xenrs diff``: before, after and delta side by side, then the verdicts."""

from __future__ import annotations

from rich.text import Text

from xenrs_cli.diff import REGRESSIONS, RunstateDiff
from xenrs_cli.render.console import Table, stdout

ROWS = (("state_entry_time", "state_entry_time"), ("time[0] running", "running"),
        ("time[1] runnable", "runnable"), ("time[2] blocked", "blocked"),
        ("time[3] offline", "offline"), ("steal", "steal"))


def _value(side: dict, key: str) -> int | None:
    if key in ("state_entry_time", "steal"):
        return side[key]
    return side["time"][key]


def _ns(v: int | None) -> str:
    return "—" if v is None else f"{v:,}"


def _delta(v: int) -> Text:
    text = f"{v:+,}"
    return Text(text, style="bold red" if v < 0 else "green" if v > 0 else "dim")


def render_diff(rec: RunstateDiff, obj: dict) -> None:
    con = stdout()
    b, a = obj["before"], obj["after"]
    head = Text()
    head.append(f"GPA {obj['gpa']}", style="bold")
    head.append(f"  {obj['layout']}  ")
    head.append(f"{b['dump']} → {a['dump']}", style="dim")
    con.print(head)
    t = Table(box=None, header_style="bold", pad_edge=False)
    t.add_column("field")
    t.add_column("before (ns)", justify="right")
    t.add_column("after (ns)", justify="right")
    t.add_column("delta (ns)", justify="right")
    t.add_row("state", b["state"], a["state"], "")
    flag = {True: "set", False: "clear", None: "—"}
    t.add_row("XEN_RUNSTATE_UPDATE", flag[b["update_in_progress"]],
              flag[a["update_in_progress"]], "")
    for label, key in ROWS:
        t.add_row(label, _ns(_value(b, key)), _ns(_value(a, key)), _delta(obj["delta"][key]))
    t.add_row("accounted (sum of time[])", _ns(b["time_sum"]), _ns(a["time_sum"]),
              _delta(obj["elapsed"]))
    # 0 on KVM, the vCPU's creation time on Xen: constant for a vCPU's life (accounting_drift)
    drift = (None if b["unaccounted"] is None or a["unaccounted"] is None
             else a["unaccounted"] - b["unaccounted"])
    t.add_row("unaccounted (entry - sum)", _ns(b["unaccounted"]), _ns(a["unaccounted"]),
              "—" if drift is None else _delta(drift))
    con.print(t)
    verdicts = Text("verdicts: ")
    if not obj["verdicts"]:
        verdicts.append("none", style="green")
    for i, v in enumerate(obj["verdicts"]):
        if i:
            verdicts.append(", ")
        verdicts.append(v, style="bold red" if v in REGRESSIONS else "yellow")
    con.print(verdicts)
    con.print()
