from django.urls import path

from .views import admin_files

app_name = "wagtail_paid_delivery_admin"

urlpatterns = [
    path("files/<path:name>", admin_files.product_file, name="product_file"),
]
