from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_login_failed

        from accounts.signin_audit import locked_out_record, login_failed_record

        user_login_failed.connect(login_failed_record, dispatch_uid="accounts.login_failed_record")
        user_locked_out.connect(locked_out_record, dispatch_uid="accounts.locked_out_record")
