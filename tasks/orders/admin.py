"""Django admin of the orders domain: products, and orders with their items and workflow steps."""

from functools import partial

from django.contrib import admin
from django.urls import reverse
from django.utils.html import format_html

from tasks.orders.models import Order, OrderItem, OrderStep, Product
from tasks.orders.services.orders import order_cancel
from tasks.platform.admin.actions import apply_each


class InStockFilter(admin.SimpleListFilter):
    title = "stock"
    parameter_name = "stock"

    def lookups(self, request, model_admin):
        return [("out", "Out of stock"), ("in", "In stock")]

    def queryset(self, request, queryset):
        if self.value() == "out":
            return queryset.filter(stock=0)
        if self.value() == "in":
            return queryset.filter(stock__gt=0)
        return queryset


@admin.register(Product)
class ProductAdmin(admin.ModelAdmin):
    list_display = ("sku", "name", "price", "stock")
    list_editable = ("stock",)
    list_filter = (InStockFilter,)
    search_fields = ("sku", "name")
    ordering = ("sku",)


class OrderItemInline(admin.TabularInline):
    model = OrderItem
    extra = 0
    can_delete = False
    readonly_fields = ("product", "quantity", "unit_price")

    def has_add_permission(self, request, obj=None) -> bool:
        return False


class OrderStepInline(admin.TabularInline):
    """The order's jobs: each step, its job's state and attempts, a link to the job."""

    model = OrderStep
    extra = 0
    can_delete = False
    fields = ("position", "name", "job_link", "job_state", "job_attempts", "job_error")
    readonly_fields = fields

    def has_add_permission(self, request, obj=None) -> bool:
        return False

    def get_queryset(self, request):
        return super().get_queryset(request).select_related("job")

    @admin.display(description="job")
    def job_link(self, step: OrderStep) -> str:
        return format_html('<a href="{}">{}</a>', reverse("admin:tasks_job_change", args=[step.job_id]), step.job_id)

    @admin.display(description="state")
    def job_state(self, step: OrderStep) -> str:
        return step.job.state

    @admin.display(description="attempts")
    def job_attempts(self, step: OrderStep) -> int:
        return step.job.attempts

    @admin.display(description="error")
    def job_error(self, step: OrderStep) -> str:
        return step.job.error


@admin.register(Order)
class OrderAdmin(admin.ModelAdmin):
    list_display = ("id", "customer", "status", "total", "created_at", "finished_at")
    list_filter = ("status", "created_at", "finished_at")
    search_fields = ("=id", "customer__username", "email", "payment_reference")
    date_hierarchy = "created_at"
    list_select_related = ("customer",)
    # Orders change through their workflow; admins read them and may cancel them.
    readonly_fields = [field.name for field in Order._meta.fields if field.name != "payment_token"]
    exclude = ("payment_token",)
    inlines = [OrderItemInline, OrderStepInline]
    actions = ["cancel_orders"]

    def has_add_permission(self, request) -> bool:
        return False

    @admin.action(description="Cancel the selected orders (reserved stock goes back)", permissions=["change"])
    def cancel_orders(self, request, queryset) -> None:
        cancel = partial(order_cancel, by=request.user, via="admin")
        apply_each(self, request, queryset, lambda order: cancel(order_id=order.pk), done="order(s) cancelled")
