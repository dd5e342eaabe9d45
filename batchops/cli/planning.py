"""`validate`, `plan` and `show`: what the specs say and what apply would do."""

from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import click
import orjson

from batchops.cli import (
    _complete_files,
    _context,
    _exclusive,
    cli,
    job_option,
    json_option,
    plan_json,
    plan_markdown,
    plan_text,
    replace_option,
)
from batchops.safetext import terminal
from batchops.views.text import plural


@cli.command()
@job_option
@json_option
@click.pass_context
def validate(ctx: click.Context, job_names: tuple[str, ...], json_: bool) -> None:
    """Parse and check every spec and render every item (no network, no state)."""
    context = _context(ctx)
    jobs = context.validate(job_names)
    if json_:
        click.echo(
            orjson.dumps(
                {"valid": True, "jobs": [asdict(j) for j in jobs]}, option=orjson.OPT_INDENT_2
            ).decode()
        )
        return
    from batchops.views.tables import validate_table

    click.echo(validate_table(jobs))
    for j in jobs:
        if j.cost_note:
            click.echo(f"Note: {j.name}: {terminal(j.cost_note)}")
        for warning in j.warnings:
            click.echo(f"Warning: {terminal(warning)}", err=True)
    total = sum(j.items for j in jobs)
    click.echo(f"\nValid: {plural(len(jobs), 'job')}, {plural(total, 'item')}.")


@cli.command()
@job_option
@json_option
@click.option("--markdown", is_flag=True, help="Markdown for a pull-request comment.")
@click.option("--detailed-exitcode", is_flag=True, help="Exit 0 with no changes, 2 with changes.")
@click.option("--no-refresh", is_flag=True, help="Stay offline: use recorded remote state.")
@click.option(
    "-o",
    "--out",
    "out_file",
    type=click.Path(path_type=Path),
    help="Save the plan to apply it later.",
)
@replace_option
@click.pass_context
def plan(
    ctx: click.Context,
    job_names: tuple[str, ...],
    json_: bool,
    markdown: bool,
    detailed_exitcode: bool,
    no_refresh: bool,
    out_file: Path | None,
    replace_items: tuple[str, ...],
) -> None:
    """Show what apply would do, and what it would cost. Writes nothing."""
    _exclusive(ctx, json=json_, markdown=markdown)
    if out_file is not None:
        from batchops.plan.saved import check_target

        check_target(out_file)
    context = _context(ctx, remote=not no_refresh)
    the_plan, desired = context.plan(
        job_names,
        refresh=not no_refresh,
        replace_items=replace_items,
        keep_requests=out_file is not None,  # written to the file without a second render
    )
    source = context.prices.source
    if json_:
        from batchops.views.plan import plan_json_lines

        for piece in plan_json_lines(the_plan, source):
            click.echo(piece, nl=False)
    elif markdown:
        click.echo(plan_markdown(the_plan, source))
    else:
        click.echo(plan_text(the_plan, source))
    for note in the_plan.notes:
        click.echo(f"Drift: {terminal(note)}", err=json_ or markdown)
    from batchops.plan.build import check_budget

    check_budget(the_plan)  # a plan over budget is shown, never saved
    if out_file is not None:
        from batchops.plan import saved

        saved.save(the_plan, desired, out_file, source)
        if not json_:
            import shlex

            # what it sends again on purpose is named again by whoever applies it
            command = " ".join(["batchops apply", str(out_file)] + [
                f"--replace {shlex.quote(f'{job}:{key}')}" for job, key in sorted(desired.replace)
            ])  # fmt: skip
            message = f"Saved this plan to {out_file}: apply it with `{command}`."
            click.echo(terminal(message), err=markdown)
    if detailed_exitcode and the_plan.changes:
        ctx.exit(2)


@cli.command()
@click.argument("plan_file", type=click.Path(path_type=Path), shell_complete=_complete_files)
@json_option
@click.option("--markdown", is_flag=True, help="Markdown for a pull-request comment.")
@click.pass_context
def show(ctx: click.Context, plan_file: Path, json_: bool, markdown: bool) -> None:
    """Render a saved plan the way `plan` does (checked against the specs; no network)."""
    _exclusive(ctx, json=json_, markdown=markdown)
    saved = _context(ctx).load_plan(plan_file)
    source = saved.header.get("plan", {}).get("prices")
    if json_:
        click.echo(plan_json(saved.plan, source))
    elif markdown:
        click.echo(plan_markdown(saved.plan, source))
    else:
        click.echo(plan_text(saved.plan, source))
