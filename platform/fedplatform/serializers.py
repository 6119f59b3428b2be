"""Serializers shared by every API: the error shape, and an institution named inside another object."""

from rest_framework import serializers

#: The largest primary key a ``BigAutoField`` holds. Inputs that name an object by its id
#: are capped here: a larger number reaching a query crashes the database driver
#: ("int too large") instead of simply matching nothing.
MAX_ID = 2**63 - 1


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


class InstitutionRefSerializer(serializers.Serializer):
    """An institution named inside another object."""

    id = serializers.IntegerField()
    name = serializers.CharField()

    class Meta:
        ref_name = "InstitutionRef"
