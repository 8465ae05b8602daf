"""A site with its own base Page (Wagtail's test BasePage) that sells products with the mixin.

Only loaded under tests/settings_custombase.py, in a subprocess (tests/test_custom_base_page.py):
WAGTAIL_PAGE_MODEL cannot change inside one process.
"""
