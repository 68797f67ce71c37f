"""Reports a person looks at: reliability diagrams, risk–coverage curves, an HTML page."""

from .figures import Figure, confidence_histogram, reliability_diagram, risk_coverage_plot
from .html import Section, render_html

__all__ = [
    "Figure",
    "Section",
    "confidence_histogram",
    "reliability_diagram",
    "render_html",
    "risk_coverage_plot",
]
