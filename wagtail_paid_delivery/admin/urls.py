from django.urls import path

from . import buyers, buyers_only, files, selftest

app_name = "wagtail_paid_delivery_admin"

urlpatterns = [
    path("files/<path:name>", files.product_file, name="product_file"),
    path("buyers-only/", buyers_only.BuyersOnlyIndexView.as_view(), name="buyers_only_index"),
    path("buyers-only/<int:page_id>/", buyers_only.BuyersOnlyView.as_view(), name="buyers_only"),
    path("selftest/", selftest.SelfTestView.as_view(), name="selftest"),
    path("buyers/", buyers.BuyerDataView.as_view(), name="buyer_data"),
    path("buyers/export/", buyers.ExportView.as_view(), name="buyer_export"),
    path("buyers/erase/", buyers.EraseView.as_view(), name="buyer_erase"),
    path("purchases/<int:pk>/buyer/", buyers.BuyerDataView.as_view(), name="purchase_buyer_data"),
    path("purchases/<int:pk>/erase/", buyers.EraseView.as_view(), name="purchase_erase"),
    path("purchases/<int:pk>/view-as/", buyers.ViewAsBuyerView.as_view(), name="view_as"),
]
