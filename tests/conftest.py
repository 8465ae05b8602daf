import pytest


@pytest.fixture
def home(db):
    from tests.factories import home_page

    return home_page()


@pytest.fixture
def admin_user(db):
    from tests.factories import SuperuserFactory

    return SuperuserFactory(username="admin")


@pytest.fixture
def admin_client(client, admin_user):
    client.force_login(admin_user)
    return client


@pytest.fixture
def fake_stripe(monkeypatch):
    """An in-memory Stripe behind stripe-python (only HTTP is replaced): tests/stripe_fake.py."""
    from tests.stripe_fake import FakeStripe
    from wagtail_paid_delivery import stripe_api

    fake = FakeStripe()
    monkeypatch.setattr(stripe_api, "_http_client_override", fake)
    stripe_api.reset_clients()
    yield fake
    stripe_api.reset_clients()
