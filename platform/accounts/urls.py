from __future__ import annotations

from django.urls import path

from accounts.apis import InvitationAcceptApi, InvitationCreateApi, MeApi

urlpatterns = [
    path("me/", MeApi.as_view(), name="me"),
    path("invitations/", InvitationCreateApi.as_view(), name="invitation-create"),
    path("invitations/accept/", InvitationAcceptApi.as_view(), name="invitation-accept"),
]
