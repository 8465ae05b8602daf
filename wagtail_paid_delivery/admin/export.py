"""Spreadsheet exports that a spreadsheet cannot run (formula injection, OWASP "CSV Injection").

Buyers type their email address and editors their product titles; a cell that begins with
``=``, ``+``, ``-`` or ``@`` (or a tab or carriage return) is a formula to Excel, LibreOffice
and Google Sheets when the export is opened. Wagtail's listing export (``SpreadsheetExportMixin``)
already stores an XLSX cell beginning with ``=`` as text, but leaves CSV cells as they are. This
mixin escapes both: a CSV cell gets a leading apostrophe (``'=cmd``, shown as typed; the
apostrophe is visible in the cell, the usual price of CSV), an XLSX cell stays exactly the text it
was, typed as text and marked "quote prefix", so even editing it in Excel keeps it text.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

#: A text cell beginning with one of these is read as a formula by spreadsheet programs.
FORMULA_TRIGGERS = ("=", "+", "-", "@", "\t", "\r")


def is_formula_like(value: Any) -> bool:
    return isinstance(value, str) and value.startswith(FORMULA_TRIGGERS)


def escape_csv_cell(value: Any) -> Any:
    """``value`` with a leading apostrophe when a spreadsheet would run it."""
    return "'" + value if is_formula_like(value) else value


class FormulaSafeExportMixin:
    """For a Wagtail ``IndexView`` (before it in the bases): exports with no runnable cell."""

    FORMAT_CSV: str
    FORMAT_XLSX: str

    def preprocess_field_value(self, field: str, value: Any, export_format: str) -> Any:
        value = super().preprocess_field_value(field, value, export_format)  # type: ignore[misc]
        if export_format == self.FORMAT_CSV:
            return escape_csv_cell(value)
        return value

    def generate_xlsx_row(self, worksheet: Any, row_dict: Any, date_format: Any = None) -> Iterator:
        cells = super().generate_xlsx_row(worksheet, row_dict, date_format)  # type: ignore[misc]
        for cell in cells:
            if is_formula_like(cell.value):
                cell.data_type = "s"
                cell.quotePrefix = True
            yield cell
