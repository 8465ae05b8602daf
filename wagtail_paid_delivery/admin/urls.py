from django.urls import path

from . import files, selftest

app_name = "wagtail_paid_delivery_admin"

urlpatterns = [
    path("files/<path:name>", files.product_file, name="product_file"),
    path("selftest/", selftest.SelfTestView.as_view(), name="selftest"),
]
