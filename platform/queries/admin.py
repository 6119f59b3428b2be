from django.contrib import admin

from queries.models import Query, QuerySite, QuerySpend

admin.site.register(Query)
admin.site.register(QuerySite)
admin.site.register(QuerySpend)
