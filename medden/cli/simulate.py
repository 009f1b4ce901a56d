"""``medden simulate``: add a physics noise model's noise to a scan and write it in the same format."""
from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer

from medden.cli.base import app, finite, out, parse_params, parse_sigma, steps
from medden.errors import InputError


@app.command()
def simulate(
    input: Path = typer.Argument(..., help="Clean or full-dose scan: NIfTI/NRRD/MHA file, DICOM file or series folder."),
    output: Path = typer.Option(..., "-o", "--output", help="Output path (same format family as the input)."),
    model: str = typer.Option(..., "--model", "-m", help="Noise model: gaussian, poisson, poisson-gaussian, rician, "
                                                         "noncentral-chi, lowdose-ct, lowdose-ct-insertion."),
    seed: int = typer.Option(0, "--seed", help="Random seed: the same seed gives the same output."),
    dose: Optional[float] = typer.Option(None, "--dose", help="CT models: fraction of the full dose, in (0, 1]."),
    sigma: Optional[str] = typer.Option(None, "--sigma", help="Noise sigma in the volume's units, or N% of the 99.9th "
                                                              "percentile of the non-zero voxels (e.g. 3%)."),
    counts: Optional[float] = typer.Option(None, "--counts", help="Poisson models: counts per unit intensity."),
    coils: Optional[int] = typer.Option(None, "--coils", help="noncentral-chi: receive coils L."),
    param: List[str] = typer.Option([], "--param", "-p", help="Other model parameter NAME=VALUE (repeatable), "
                                                              "e.g. -p n_views=1152."),
    device: str = typer.Option("cpu", "--device", help="cpu (same output on every machine), cuda or auto."),
    series_uid: Optional[str] = typer.Option(None, "--series-uid", help="SeriesInstanceUID when a folder holds several."),
    modality: str = typer.Option("auto", "--modality", help="auto (from the file or its values), ct, mr, pt, nm."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing output."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print nothing but errors."),
) -> None:
    """Simulate noise (physics models, e.g. low-dose CT) on a scan and write it in the same format.

    The parameters are recorded with the output: in its history (NIfTI descrip, DICOM DerivationDescription) and,
    for NIfTI/NRRD/MHA, in a JSON sidecar beside it.
    """
    from medden.inference import resolve_device
    from medden.io import check_output, load_volume, save_volume
    from medden.noise import get_model, simulate as simulate_noise
    from medden.pipeline import override_modality
    from medden.provenance import simulation_record

    spec = get_model(model)
    given: dict = {**parse_params(param),
                   **{name: value for name, value in (("dose", finite(dose, "--dose")),
                                                      ("sigma", parse_sigma(sigma, allow_auto=False)),
                                                      ("counts_per_unit", finite(counts, "--counts")),
                                                      ("coils", coils)) if value is not None}}
    spec.resolve_params(given)
    resolve_device(device)
    if not input.exists():
        raise InputError(f"{input} does not exist")
    check_output(output, overwrite=overwrite, protect=(input,))
    with steps(quiet) as step:
        step(f"Loading {input}")
        volume = override_modality(load_volume(input, series_uid=series_uid), modality)
        check_output(output, like=volume, overwrite=overwrite, protect=(input,))
        step(f"Simulating {spec.name} noise ({volume.shape[0]}×{volume.shape[1]}×{volume.shape[2]} voxels)")
        result = simulate_noise(volume, spec.name, seed=seed, device=device, **given)
        step(f"Writing {output}")
        written = save_volume(result, output, overwrite=overwrite, description=f"medden simulate {spec.name}",
                              protect=(input,), provenance=simulation_record(result, input_path=input))
    if not quiet:
        out.print(f"{written}  [{result.history[-1]}]")
