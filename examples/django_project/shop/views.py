"""POST /signup {"email", "name"}: the customer and its welcome email task, in one transaction."""

from __future__ import annotations

import json

from django.db import IntegrityError
from django.http import HttpRequest, JsonResponse
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_POST

from examples.django_project.shop.services import sign_up


@csrf_exempt
@require_POST
def signup(request: HttpRequest) -> JsonResponse:
    body = json.loads(request.body or b"{}")
    try:
        customer, task_id = sign_up(str(body["email"]), str(body["name"]))
    except IntegrityError:
        return JsonResponse({"error": f"{body['email']} is already signed up"}, status=409)
    return JsonResponse({"customerId": customer.pk, "taskId": task_id}, status=201)
