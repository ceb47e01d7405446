"""Progress bar and table of ``xenrs scan``."""

from __future__ import annotations

from rich.progress import (BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn,
                           TransferSpeedColumn)
from rich.text import Text

from xenrs_cli.render.console import Table, stderr, stdout


class ProgressBar:
    """Bytes of the scanned range, rate and ETA on stderr; the core calls it as
    ``progress(done, total)``."""

    def __init__(self, label: str) -> None:
        self._progress = Progress(TextColumn(label), BarColumn(), DownloadColumn(binary_units=True),
                                  TransferSpeedColumn(), TimeRemainingColumn(),
                                  console=stderr(), transient=True, refresh_per_second=5,
                                  # stdout carries results only: never route it through the bar
                                  redirect_stdout=False, redirect_stderr=False)
        self._task = None

    def __enter__(self) -> "ProgressBar":
        self._progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self._progress.stop()

    def __call__(self, done: int, total: int) -> None:
        if self._task is None:
            self._task = self._progress.add_task("", total=total)
        self._progress.update(self._task, completed=done, total=total)


LATER_STYLE = {"advanced": "green", "unchanged": "dim", "inconsistent": "red",
               "missing": "yellow"}


def _ns(v: int | None) -> str:
    return "—" if v is None else f"{v / 1e9:,.3f} s"


class ScanTable:
    """Collects the hits and prints one table at the end."""

    def __init__(self, dump: str) -> None:
        self.dump = dump
        self.rows: list[dict] = []

    def emit(self, hit, obj: dict) -> None:
        self.rows.append(obj)

    def close(self, stats, page_size: int) -> None:
        con = stdout()
        if not self.rows:
            con.print(Text(f"{self.dump}: no runstate area found", style="yellow"))
            return
        # An 80-column terminal cannot hold every column whole: the array column goes when no
        # hit is in an array, columns are one space apart instead of two, and array and notes
        # wrap; GPAs and numbers never break or get cut.
        has_array = any(o["array_index"] is not None for o in self.rows)
        narrow = con.width < 100
        t = Table(title=f"{self.dump}: {len(self.rows)} runstate area(s)", title_justify="left",
                  header_style="bold", box=None, pad_edge=False, collapse_padding=narrow)
        later = "later" in self.rows[0]
        columns = [("GPA", "left"), ("layout", "left"), ("state", "left"),
                   ("entry time", "right"), ("accounting", "left"), ("steal", "right"),
                   *((("later", "left"),) if later else ()), ("array", "left"),
                   ("notes", "left")]
        for col, just in columns:
            if col == "array" and not has_array:
                continue
            t.add_column(col, justify=just, no_wrap=col not in ("array", "notes"))
        for o in self.rows:
            notes = []
            if o["update_in_progress"]:
                notes.append(Text("mid-update", style="bold yellow"))
            if o["crosses_page"]:
                notes.append(Text(f"crosses page at +{o['split_at']}", style="yellow"))
            if any(p["status"] != "present" for p in o["pieces"]):
                notes.append(Text("bytes not present", style="red"))
            if o["ambiguous_with"]:
                tw = o["ambiguous_with"]
                notes.append(Text(f"or {tw['layout']} at {tw['gpa']}", style="magenta"))
            array = ("" if o["array_index"] is None
                     else f"{o['array_gpa']}[{o['array_index']}/{o['array_len']}]")
            t.add_row(o["gpa"], o["layout"], o["state"], _ns(o["state_entry_time"]),
                      o["accounting"] or "—", _ns(o["steal"]),
                      *((Text(o["later"], style=LATER_STYLE.get(o["later"], "")),) if later
                        else ()),
                      *((array,) if has_array else ()), Text(", ").join(notes))
        con.print(t)
