"""The order pages: a form to place an order, and an order with its workflow steps live."""

from __future__ import annotations

from uuid import UUID

from django import forms
from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import redirect, render
from django.urls import path, reverse
from django.views.decorators.http import require_GET, require_http_methods

from tasks.orders.models import Product
from tasks.orders.selectors import order_get_visible
from tasks.orders.services.orders import SETTLED, WORKFLOW, OrderLine, OrderRejected, order_place
from tasks.orders.services.payments import TOKEN_DECLINE, TOKEN_FLAKY, TOKEN_OK, TOKEN_SLOW
from tasks.platform.services.allowances import EnqueueRefused, allowance_for, enqueue_admit, order_admit

#: most products the form lists
FORM_PRODUCTS = 50
SANDBOX_TOKENS = [
    (TOKEN_OK, "tok_ok: approved"),
    (TOKEN_DECLINE, "tok_decline: declined"),
    (TOKEN_FLAKY, "tok_flaky: 503 twice, then approved"),
    (TOKEN_SLOW, "tok_slow: times out"),
]


class OrderForm(forms.Form):
    """One quantity field per product in stock, the payment token and the e-mail."""

    payment_token = forms.CharField(label="Payment token", max_length=100)
    email = forms.EmailField(label="E-mail for the confirmation")

    def __init__(self, *args, products: list[Product], **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.products = products
        if settings.PAYMENT_SANDBOX:
            self.fields["payment_token"] = forms.ChoiceField(label="Test card (sandbox)", choices=SANDBOX_TOKENS)
        for product in products:
            self.fields[self.quantity_field(product)] = forms.IntegerField(
                label=f"{product.name} ({product.sku}), {product.price} EUR, {product.stock} in stock",
                min_value=0,
                max_value=10_000,
                initial=0,
                required=False,
            )

    @staticmethod
    def quantity_field(product: Product) -> str:
        return f"quantity_{product.pk}"

    def quantity_fields(self):
        return [self[self.quantity_field(product)] for product in self.products]

    def lines(self) -> list[OrderLine]:
        quantities = ((p, self.cleaned_data.get(self.quantity_field(p)) or 0) for p in self.products)
        return [OrderLine(product.sku, quantity) for product, quantity in quantities if quantity > 0]

    def clean(self):
        cleaned = super().clean()
        if not self.errors and not self.lines():
            raise forms.ValidationError("Choose at least one product.")
        return cleaned


@login_required
@require_http_methods(["GET", "POST"])
def order_form(request: HttpRequest) -> HttpResponse:
    """Place an order through the same service as the API; the workflow starts at once."""
    products = list(Product.objects.filter(stock__gt=0).order_by("name")[:FORM_PRODUCTS])
    initial = {"email": request.user.email}
    form = OrderForm(request.POST or None, products=products, initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            # The API's limits, so the form is no way around them (a card tester's, say).
            order_admit(user=request.user)
            enqueue_admit(user=request.user, allowance=allowance_for(user=request.user), jobs=len(WORKFLOW))
        except EnqueueRefused as exc:
            form.add_error(None, str(exc))
            return render(request, "tasks/order_form.html", {"form": form}, status=exc.status)
        try:
            order = order_place(
                customer=request.user,
                lines=form.lines(),
                payment_token=form.cleaned_data["payment_token"],
                email=form.cleaned_data["email"],
            )
        except OrderRejected as exc:
            form.add_error(None, str(exc))
        else:
            return redirect("order_page", order_id=order.pk)
    return render(request, "tasks/order_form.html", {"form": form}, status=422 if form.errors else 200)


@login_required
@require_GET
def order_page(request: HttpRequest, order_id: UUID) -> HttpResponse:
    """The order and its three steps, each followed live; the customer's own, or any for staff."""
    order = order_get_visible(user=request.user, order_id=order_id)
    steps = [
        {
            "name": step.name,
            "label": step.get_name_display(),
            "job_id": str(step.job_id),
            "state": step.job.state,
            "finished": step.job.finished,
            "events_url": reverse("job_events", kwargs={"job_id": step.job_id}),
            "job_url": reverse("job_page", kwargs={"job_id": step.job_id}),
        }
        for step in order.steps.all()
    ]
    live = {
        "order_url": reverse("api:order_get", kwargs={"order_id": order.pk}),
        "status": order.status,
        "settled": order.status in SETTLED,
        "steps": steps,
    }
    return render(request, "tasks/order_detail.html", {"order": order, "steps": steps, "live": live})


urlpatterns = [
    path("orders/new", order_form, name="order_form"),
    path("orders/<uuid:order_id>", order_page, name="order_page"),
]
