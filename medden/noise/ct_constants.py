"""The default scanner of the low-dose CT models (:mod:`medden.noise.lowdose_ct`): numbers only, so the noise-model
registry can show them without loading torch."""
import math

I0_PHOTONS = 1.0e5  # unattenuated photons per channel per view at full dose
SIGMA_ELECTRONIC = math.sqrt(10.0)  # photons
MU_WATER_PER_MM = 0.0194  # 1/mm at the effective energy
VIEWS_REFERENCE = 1152  # views per rotation I0_PHOTONS refers to
SOURCE_TO_ISOCENTER_MM = 595.0
SOURCE_TO_DETECTOR_MM = 1085.6
N_VIEWS = 576
MIN_COUNTS = 1.0  # photons; a ray that detects none is read as one (photon starvation)
