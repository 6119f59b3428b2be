"""Serializers shared by every API: the error shape."""

from rest_framework import serializers


class ErrorDetailSerializer(serializers.Serializer):
    code = serializers.CharField()
    message = serializers.CharField()

    def get_fields(self) -> dict[str, serializers.Field]:
        # A field called "fields" cannot be a class attribute: it would hide Serializer.fields.
        declared = super().get_fields()
        declared["fields"] = serializers.DictField(
            child=serializers.ListField(child=serializers.CharField()),
            required=False,
            help_text="messages per invalid input field",
        )
        return declared


class ErrorResponseSerializer(serializers.Serializer):
    error = ErrorDetailSerializer()
