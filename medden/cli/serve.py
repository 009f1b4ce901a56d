"""``medden serve``: a DICOM node that denoises what a PACS sends it (see :mod:`medden.serve`)."""
from __future__ import annotations

from pathlib import Path
from typing import List

import typer

from medden.cli.base import app, parse_params, parse_sigma
from medden.errors import MeddenError


@app.command()
def serve(
    forward: str = typer.Option(..., "--forward", help="Where derived series go: HOST:PORT:AET."),
    ae_title: str = typer.Option("MEDDEN", "--ae-title", help="This node's AE title."),
    port: int = typer.Option(11112, "--port", help="DICOM port to listen on."),
    host: str = typer.Option("", "--host", help="Address to listen on (default: all interfaces)."),
    spool: Path = typer.Option(Path("medden-spool"), "--spool", help="Queue folder (kept across restarts)."),
    method: str = typer.Option("auto", "--method", "-m", help="Registry name or auto."),
    sigma: str = typer.Option("auto", "--sigma", help="Noise standard deviation in the volume's units, or auto."),
    param: List[str] = typer.Option([], "--param", "-p", help="Method parameter NAME=VALUE (repeatable)."),
    device: str = typer.Option("auto", "--device", help="auto, cpu or cuda."),
    quiet_time: float = typer.Option(10.0, "--quiet-time", help="Seconds without a new instance that complete a series."),
    retry_wait: float = typer.Option(2.0, "--retry-wait", help="First wait (s) after a failed forward; doubles, up to 300."),
    once: bool = typer.Option(False, "--once", help="Exit when what arrived is forwarded and nothing came for the quiet time."),
) -> None:
    """DICOM node: receive CT/MR series (C-STORE), denoise each complete series, forward the derived series."""
    from medden.denoisers import get_method
    from medden.serve import DicomNode, NodeConfig, parse_destination

    params = parse_params(param)
    if method != "auto":
        get_method(method).resolve_params(dict(params))
    config = NodeConfig(forward=parse_destination(forward), spool=spool, ae_title=ae_title, port=port, host=host,
                        method=method, sigma=parse_sigma(sigma), device=device, params=params,
                        quiet_s=quiet_time, retry_s=retry_wait, once=once)
    failed = DicomNode(config).run()
    if failed:
        raise MeddenError(f"{failed} series could not be denoised; they are kept in {spool / 'failed'}")

