"""The plan: typed actions (`actions`), the pure diff that makes them (`diff`), how a plan is
built from specs and state (`build`), its JSON shape (`serialize`) and saved plan files (`saved`)."""
