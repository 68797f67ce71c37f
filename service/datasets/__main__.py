from service.cli.dataset import app

app(prog_name="calib dataset")
