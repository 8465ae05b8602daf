import django.db.models.deletion
import django.utils.timezone
import swapper
from django.conf import settings
from django.db import migrations, models


class Migration(migrations.Migration):
    dependencies = [
        ("wagtail_paid_delivery", "0016_license_keys"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
        swapper.dependency("wagtailcore", "Page"),
    ]

    operations = [
        migrations.CreateModel(
            name="BuyersOnlyRestriction",
            fields=[
                (
                    "id",
                    models.BigAutoField(
                        auto_created=True, primary_key=True, serialize=False, verbose_name="ID"
                    ),
                ),
                (
                    "created_at",
                    models.DateTimeField(
                        default=django.utils.timezone.now, editable=False, verbose_name="created"
                    ),
                ),
                ("updated_at", models.DateTimeField(auto_now=True, verbose_name="updated")),
                (
                    "page",
                    models.OneToOneField(
                        on_delete=django.db.models.deletion.CASCADE,
                        related_name="buyers_only_restriction",
                        to=swapper.get_model_name("wagtailcore", "Page"),
                        verbose_name="page",
                    ),
                ),
                (
                    "product",
                    models.ForeignKey(
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=swapper.get_model_name("wagtailcore", "Page"),
                        verbose_name="product",
                    ),
                ),
                (
                    "updated_by",
                    models.ForeignKey(
                        blank=True,
                        editable=False,
                        null=True,
                        on_delete=django.db.models.deletion.SET_NULL,
                        related_name="+",
                        to=settings.AUTH_USER_MODEL,
                        verbose_name="updated by",
                    ),
                ),
            ],
            options={
                "verbose_name": "buyers-only restriction",
                "verbose_name_plural": "buyers-only restrictions",
            },
        ),
    ]
