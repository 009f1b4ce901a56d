"""De-identification of DICOM outputs: the DICOM PS3.15 Annex E Basic Application Level Confidentiality Profile.

The profile's action table (PS3.15 Table E.1-1: remove, empty, dummy, or replace UIDs for each of ~650 attributes,
and remove every private attribute) is applied by ``dicom-anonymizer`` (KitwareMedical, BSD licence, with the table
of the 2026c standard). medden adds what that library leaves random or unset:

* UIDs (Study, Series, SOP Instance, Frame of Reference, referenced images, …) are replaced by a keyed hash of the
  original (``2.25.<HMAC-SHA256>``), so every series of one study written with the same key keeps one new
  StudyInstanceUID and Frame of Reference, and references between instances still resolve;
* PatientID becomes a keyed pseudonym (the same patient gives the same pseudonym under one key, and the mapping
  cannot be reversed or recomputed without the key — not an unsalted hash);
* PatientIdentityRemoved = YES and DeidentificationMethod / DeidentificationMethodCodeSequence (113100, DCM,
  "Basic Application Confidentiality Profile") record what was done.

Dates and times are removed or replaced by dummy values as the basic profile says (no date shifting is claimed).
"""
from __future__ import annotations

import hashlib
import hmac
import secrets

from medden.errors import MissingDependencyError, ParameterError

PROFILE_CODE = ("113100", "DCM", "Basic Application Confidentiality Profile")
DEIDENTIFICATION_METHOD = "PS3.15 Basic Application Confidentiality Profile (medden)"
#: The PS3.15 Table E.1-1 edition applied (a table of dicom-anonymizer).
PROFILE_TABLE = "dicomfields_2026c"
_STANDARD_UIDS = "1.2.840.10008."  # SOP classes, transfer syntaxes, coding schemes: never patient data
_SESSION_KEY = secrets.token_hex(16)


def anonymization_key(anonymize: bool | str) -> str | None:
    """The secret that keys UID and PatientID replacement: ``True`` → one random key per process (consistent across
    every output of one run), a non-empty string → that key (consistent across runs and machines that share it),
    ``False``/``None`` → no anonymisation."""
    if anonymize is None or anonymize is False:
        return None
    if anonymize is True:
        return _SESSION_KEY
    if isinstance(anonymize, str) and anonymize:
        return anonymize
    raise ParameterError(f"anonymize must be True, False or a non-empty key string, got {anonymize!r}")


def remap_uid(uid: str, key: str) -> str:
    """A new UID for ``uid``: the same under one key, unrelated to it without the key (``2.25.`` + 128 bits)."""
    digest = hmac.new(key.encode(), str(uid).encode(), hashlib.sha256).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"


def pseudonym(value: str, key: str, prefix: str = "ANON-") -> str:
    return prefix + hmac.new(key.encode(), str(value).encode(), hashlib.sha256).hexdigest()[:16].upper()


def anonymize_dataset(ds, key: bool | str = True) -> None:
    """De-identify the pydicom dataset ``ds`` in place with the Basic Application Level Confidentiality Profile.

    Parameters
    ----------
    ds : pydicom Dataset (with ``file_meta``).
    key : the secret keying UID and PatientID replacement (see :func:`anonymization_key`); pass the same key for
        every series of a study to keep their UIDs consistent.

    Examples
    --------
    >>> import pydicom
    >>> ds = pydicom.examples.ct  # doctest: +SKIP
    >>> anonymize_dataset(ds, key="project secret")  # doctest: +SKIP
    >>> ds.PatientIdentityRemoved  # doctest: +SKIP
    'YES'
    """
    try:
        from dicomanonymizer.dicom_anonymization_databases import dicomfields_2026c as table
        from dicomanonymizer.simpledicomanonymizer import anonymize_dataset as basic_profile
        from dicomanonymizer.simpledicomanonymizer import initialize_actions
    except ImportError:
        raise MissingDependencyError("anonymisation needs dicom-anonymizer: pip install 'dicom-anonymizer>=2.1'") \
            from None
    from pydicom.dataset import Dataset
    from pydicom.sequence import Sequence

    secret = anonymization_key(key)
    if secret is None:
        return
    patient_id = str(ds.get("PatientID", "") or "")

    def remap(dataset, element) -> None:
        if element.VR != "UI" or not element.value:
            return
        values = element.value if element.VM > 1 else [element.value]
        new = [v if str(v).startswith(_STANDARD_UIDS) else remap_uid(v, secret) for v in values]
        element.value = new if element.VM > 1 else new[0]

    ds.walk(remap)  # U: every UID, nested sequences included, one mapping per key

    def already_done(dataset, tag) -> None:  # the UIDs were replaced above, consistently across the study
        return None

    uid_rules = {tag: already_done for tag in (*table.U_TAGS, *table.X_Z_U_STAR_TAGS)}

    def apply(dataset) -> None:  # the library acts on one level; sequence items get the same table
        basic_profile(dataset, extra_anonymization_rules=uid_rules, delete_private_tags=True,
                      base_rules_gen=lambda: initialize_actions(PROFILE_TABLE))
        for element in list(dataset):
            if element.VR == "SQ" and element.tag in dataset:
                for item in element.value:
                    apply(item)

    apply(ds)
    for element in list(ds):  # X/Z/D attributes the library filled with its dummy: remove (X) instead, as the
        if element.value == "ANONYMIZED":  # image IODs do not require them (Type 2 ones come back empty on writing)
            del ds[element.tag]
    if "SOPInstanceUID" in ds and getattr(ds, "file_meta", None) is not None:
        ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.PatientID = pseudonym(patient_id, secret) if patient_id else ""
    ds.PatientName = "Anonymous"
    ds.PatientIdentityRemoved = "YES"
    ds.DeidentificationMethod = DEIDENTIFICATION_METHOD
    code = Dataset()
    code.CodeValue, code.CodingSchemeDesignator, code.CodeMeaning = PROFILE_CODE
    ds.DeidentificationMethodCodeSequence = Sequence([code])
