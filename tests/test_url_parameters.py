"""The presigned backend reads a storage's ``url()`` signature once per ``url`` function."""

from unittest import mock

from wagtail_paid_delivery.serving import backends


class _SigningStorage:
    def url(self, name, parameters=None, expire=None, http_method=None):
        return name


def test_signature_is_read_once_per_storage_class():
    backends._function_parameters.cache_clear()
    with mock.patch.object(backends.inspect, "signature", wraps=backends.inspect.signature) as sig:
        for _ in range(3):
            storage = _SigningStorage()
            assert backends.presign_problem(storage) is None
            assert "parameters" in backends.url_parameters(storage)
    assert sig.call_count == 1


def test_a_url_set_on_the_instance_is_read_as_it_is():
    storage = _SigningStorage()
    storage.url = lambda name: name  # type: ignore[method-assign]
    assert backends.presign_problem(storage) == (
        "its url() takes no 'expire': it cannot make a short-lived URL"
    )
