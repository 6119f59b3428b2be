from __future__ import annotations

from django.urls import path

from institutions import apis

urlpatterns = [
    path("institutions/", apis.InstitutionListCreateApi.as_view(), name="institution-list"),
    path(
        "institutions/<int:institution_id>/", apis.InstitutionDetailApi.as_view(), name="institution-detail"
    ),
    path(
        "institutions/<int:institution_id>/enrollment-tokens/",
        apis.EnrollmentTokenListCreateApi.as_view(),
        name="institution-enrollment-tokens",
    ),
    path(
        "institutions/<int:institution_id>/enrollment-tokens/<int:token_id>/withdraw/",
        apis.EnrollmentTokenWithdrawApi.as_view(),
        name="enrollment-token-withdraw",
    ),
    path(
        "institutions/<int:institution_id>/credentials/",
        apis.CredentialListApi.as_view(),
        name="institution-credentials",
    ),
    path(
        "credentials/<int:credential_id>/revoke/",
        apis.CredentialRevokeApi.as_view(),
        name="credential-revoke",
    ),
]
