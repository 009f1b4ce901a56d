"""Clinical-quality metrics, measured the same way for every denoiser.

* :mod:`~medden.metrics.reference` — PSNR, 3D SSIM, RMSE, MAE (with masks);
* :mod:`~medden.metrics.roi` — ROIs (and the rois.json format), ROI statistics, HU bias, SNR, CNR;
* :mod:`~medden.metrics.nps` — noise power spectrum (AAPM TG-233);
* :mod:`~medden.metrics.sharpness` — ESF/LSF/MTF from an edge (ISO 12233 slanted edge), MTF50/MTF10;
* :mod:`~medden.metrics.residual` — method-noise analysis;
* :mod:`~medden.metrics.uncertainty` — coverage and reliability curve of a per-voxel uncertainty map;
* :mod:`~medden.metrics.evaluate` — :func:`evaluate`, all of the above for several estimates at once;
* :mod:`~medden.metrics.report` — :func:`write_report`: metrics.json, HTML/Markdown report, PNG figures.

This package imports only NumPy, SciPy, matplotlib (in the report) and :mod:`medden.volume` / :mod:`medden.errors`.
"""
from medden.metrics.evaluate import EvaluationResult, ImageMetrics, evaluate, uniform_mask
from medden.metrics.nps import NoisePowerSpectrum, noise_power_spectrum
from medden.metrics.reference import mae, psnr, rmse, ssim_3d
from medden.metrics.report import ReportFiles, write_report
from medden.metrics.residual import MethodNoise, method_noise
from medden.metrics.roi import (HuBias, Roi, RoiSet, RoiStats, cnr, hu_bias, load_rois, parse_rois, roi_stats, snr)
from medden.metrics.sharpness import EdgeMTF, edge_mtf, gaussian_mtf, mtf10, mtf50, mtf_at
from medden.metrics.uncertainty import UncertaintyCalibration, uncertainty_calibration

__all__ = [
    "psnr", "ssim_3d", "rmse", "mae",
    "Roi", "RoiSet", "RoiStats", "HuBias", "roi_stats", "hu_bias", "snr", "cnr", "load_rois", "parse_rois",
    "NoisePowerSpectrum", "noise_power_spectrum",
    "EdgeMTF", "edge_mtf", "mtf50", "mtf10", "mtf_at", "gaussian_mtf",
    "MethodNoise", "method_noise",
    "UncertaintyCalibration", "uncertainty_calibration",
    "evaluate", "EvaluationResult", "ImageMetrics", "uniform_mask",
    "write_report", "ReportFiles",
]
