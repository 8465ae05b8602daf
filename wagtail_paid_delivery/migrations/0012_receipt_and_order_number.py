"""Receipts: an order number on every purchase (existing ones get theirs here) and the amounts
Stripe charged, recorded at fulfillment from now on (older purchases show their price)."""

from django.db import migrations, models

import wagtail_paid_delivery.order_numbers


def backfill_order_numbers(apps, schema_editor):
    """A fresh random number for each existing purchase, in batches (never two alike)."""
    Purchase = apps.get_model("wagtail_paid_delivery", "Purchase")
    db = schema_editor.connection.alias
    manager = Purchase.objects.using(db)
    used = set(manager.exclude(order_number=None).values_list("order_number", flat=True))
    batch = []
    for purchase in manager.filter(order_number=None).only("pk").order_by("pk").iterator():
        number = wagtail_paid_delivery.order_numbers.new_order_number()
        while number in used:
            number = wagtail_paid_delivery.order_numbers.new_order_number()
        used.add(number)
        purchase.order_number = number
        batch.append(purchase)
        if len(batch) >= 500:
            manager.bulk_update(batch, ["order_number"])
            batch = []
    if batch:
        manager.bulk_update(batch, ["order_number"])


class Migration(migrations.Migration):

    dependencies = [
        ("wagtail_paid_delivery", "0011_honest_states"),
    ]

    operations = [
        migrations.AddField(
            model_name="purchase",
            name="order_number",
            field=models.CharField(
                editable=False, max_length=32, null=True, verbose_name="order number"
            ),
        ),
        migrations.RunPython(backfill_order_numbers, migrations.RunPython.noop, elidable=True),
        migrations.AlterField(
            model_name="purchase",
            name="order_number",
            field=models.CharField(
                default=wagtail_paid_delivery.order_numbers.new_order_number,
                editable=False,
                max_length=32,
                unique=True,
                verbose_name="order number",
            ),
        ),
        migrations.AddField(
            model_name="purchase",
            name="paid_currency",
            field=models.CharField(blank=True, max_length=3, verbose_name="currency charged"),
        ),
        migrations.AddField(
            model_name="purchase",
            name="amount_subtotal",
            field=models.PositiveIntegerField(
                blank=True, null=True, verbose_name="subtotal charged"
            ),
        ),
        migrations.AddField(
            model_name="purchase",
            name="amount_discount",
            field=models.PositiveIntegerField(default=0, verbose_name="discount"),
        ),
        migrations.AddField(
            model_name="purchase",
            name="amount_tax",
            field=models.PositiveIntegerField(default=0, verbose_name="tax"),
        ),
        migrations.AddField(
            model_name="purchase",
            name="amount_total",
            field=models.PositiveIntegerField(blank=True, null=True, verbose_name="total charged"),
        ),
        migrations.AddField(
            model_name="purchase",
            name="receipt_url",
            field=models.URLField(blank=True, max_length=500, verbose_name="Stripe receipt"),
        ),
    ]
