"""``_link_file_sql`` reads ``past_buyers_get`` from the table of the model that declares it."""

from types import SimpleNamespace
from unittest import mock

from django.db import connection

from wagtail_paid_delivery import links
from wagtail_paid_delivery.models.pages import product_file_models


def _policy_selects(sql):
    return sql.split("(SELECT pg.")[1:]


def test_the_sql_names_the_table_that_owns_the_field():
    links._link_file_sql.cache_clear()
    sql, _ = links._link_file_sql(connection.vendor, "token")
    quote = connection.ops.quote_name
    selects = _policy_selects(sql)
    models = list(product_file_models())
    assert len(selects) == len(models)
    for select, model in zip(selects, models, strict=True):
        field = model._meta.get_field("page").related_model._meta.get_field("past_buyers_get")
        owner = field.model
        assert f"FROM {quote(owner._meta.db_table)} pg" in select
        assert f"WHERE pg.{quote(owner._meta.pk.column)} = " in select
    links._link_file_sql.cache_clear()


def test_a_multi_table_child_reads_its_parents_table():
    # A page model whose past_buyers_get lives on its multi-table parent.
    parent = SimpleNamespace(
        _meta=SimpleNamespace(db_table="shop_parentpage", pk=SimpleNamespace(column="page_ptr_id"))
    )
    field = SimpleNamespace(model=parent, column="past_buyers_get")
    child = SimpleNamespace(
        _meta=SimpleNamespace(
            db_table="shop_childpage",
            pk=SimpleNamespace(column="parentpage_ptr_id"),
            get_field=lambda name: field,
        )
    )
    real = list(product_file_models())[0]

    def get_field(name):
        original = real._meta.get_field(name)
        if name == "page":
            return SimpleNamespace(column=original.column, related_model=child)
        return original

    file_model = mock.MagicMock(wraps=real)
    file_model._meta = mock.MagicMock(wraps=real._meta)
    file_model._meta.get_field = get_field
    file_model._meta.db_table = real._meta.db_table
    file_model._meta.pk = real._meta.pk
    links._link_file_sql.cache_clear()
    with (
        mock.patch.object(links, "product_file_models", return_value=[file_model]),
        mock.patch.object(links, "_Columns") as columns,
    ):
        columns.of.return_value.select.return_value = []
        sql, _ = links._link_file_sql(connection.vendor, "token")
    links._link_file_sql.cache_clear()
    quote = connection.ops.quote_name
    (select,) = _policy_selects(sql)
    assert f"FROM {quote('shop_parentpage')} pg" in select
    assert f"WHERE pg.{quote('page_ptr_id')} = " in select
    assert "shop_childpage" not in sql
