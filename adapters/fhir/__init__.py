"""FHIR R4: lab results as Bundles (DiagnosticReport + Observations), validated with fhir.resources' R4B models."""
