"""The worker's HTTP surface: health, the user API, the dashboard, logins and feedback views."""
