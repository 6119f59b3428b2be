from django.apps import AppConfig


class AccountsConfig(AppConfig):
    name = "accounts"

    def ready(self) -> None:
        from axes.signals import user_locked_out
        from django.contrib.auth.signals import user_logged_in, user_login_failed

        from accounts.sessions import session_mark_signed_in
        from accounts.signin_audit import locked_out_record, login_failed_record, signed_in_record

        user_login_failed.connect(login_failed_record, dispatch_uid="accounts.login_failed_record")
        user_locked_out.connect(locked_out_record, dispatch_uid="accounts.locked_out_record")
        user_logged_in.connect(session_mark_signed_in, dispatch_uid="accounts.session_mark_signed_in")
        user_logged_in.connect(signed_in_record, dispatch_uid="accounts.signed_in_record")
