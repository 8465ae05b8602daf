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
