"""``medden bids``: the BIDS App (see :mod:`medden.bids`)."""
from __future__ import annotations

import typer

from medden.cli.base import app, err, out, parse_params, parse_sigma


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bids(ctx: typer.Context) -> None:
    """BIDS App: BIDS_DIR OUTPUT_DIR participant|group [--participant-label 01 02] [--suffix T1w T2w]
    [--method M] [--sigma auto|X] [--param NAME=VALUE ...] [--device D]."""
    from medden import bids as bids_app

    args = bids_app.parse_args(list(ctx.args))
    if args.analysis_level == "group":
        out.print(f"wrote {bids_app.run_group(args.output_dir)}")
        return
    result = bids_app.run_participant(args.bids_dir, args.output_dir, labels=args.participant_label,
                                      suffixes=args.suffix, method=args.method, sigma=parse_sigma(args.sigma),
                                      params=parse_params(args.param), device=args.device)
    out.print(f"{len(result.written)} written, {len(result.skipped)} already done, {len(result.failed)} failed "
              f"in {args.output_dir}")
    for source, error in result.failed:
        err.print(f"error: {source}: {error}")
    if result.failed:
        raise typer.Exit(2)

