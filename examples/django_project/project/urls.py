"""The example's one route: POST /signup (see shop.views)."""

from django.urls import path

from examples.django_project.shop import views

urlpatterns = [path("signup", views.signup)]
