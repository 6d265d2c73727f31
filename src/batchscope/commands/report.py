"""`batchscope report DIR`: Markdown + HTML + PNG plots for a study directory."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ._options import json_option
from ._outputs import Outputs, check_outputs
from ..report.console import console_for, make_table
from ..serialize import dumps, read_json


@click.command("report")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="write here instead of DIRECTORY")
@json_option
def command(directory, out, as_json) -> None:
    """Write report.md, report.html, findings.json and the plots for the study in DIRECTORY."""
    from ..report.study_report import study_findings, write_report
    from ..study.runner import load_study

    # a missing DIRECTORY is the reader's refusal ("holds no study.db"), not a path to create
    if out is not None or Path(directory).is_dir():
        check_outputs(("--out" if out is not None else "DIRECTORY", out or directory, "directory"))
    study = load_study(directory)   # a missing, damaged or foreign study is refused here, before any write
    outputs = Outputs()
    files = outputs.write("--out" if out is not None else "the report into", out or directory,
                          lambda: write_report(directory, out, study))
    # what findings.json holds, read back as written; the same document when it could not be written
    doc = read_json(files.json) if files else json.loads(dumps(study_findings(study)))
    if as_json:
        click.echo(dumps({"files": files, **doc}))
    else:
        _print(directory, doc, files)
    outputs.finish(as_json)


def _print(directory, doc: dict, files) -> None:
    console = console_for(False)
    console.print(make_table(f"study {directory}: what the experiments show", ["finding", "verdict"],
                             [(f["claim"], f["verdict"]) for f in doc["findings"]]))
    for opt, v in doc["bcrit"].items():
        fit = v["fit"]
        if fit:
            console.print(f"{opt}: B_crit = {fit['b_crit']:.3g} [{fit['b_crit_low']:.3g}, {fit['b_crit_high']:.3g}], "
                          f"S_min = {fit['s_min']:.4g}, E_min = {fit['e_min']:.4g}")
        else:
            console.print(v["note"])
    if doc.get("diverged"):
        console.print(f"{len(doc['diverged'])} run(s) diverged (a result: listed in the report): "
                      + ", ".join(doc["diverged"]))
    if files:
        console.print(f"report: {files.markdown} (and {files.html.name}, {len(files.plots)} plots)")
