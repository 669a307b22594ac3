"""gitpack's version: one place, imported by the package and recorded in every manifest."""

__version__ = "0.2.0"
