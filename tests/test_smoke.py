from tests.factories import ProductPageFactory


def test_product_page_renders_price_and_files_without_links(client, home):
    page = ProductPageFactory(parent=home, title="Field guide", price_amount=1999, files=2)
    response = client.get(page.url)
    assert response.status_code == 200
    html = response.content.decode()
    assert "$19.99" in html
    assert "File 1" in html and "File 2" in html
    assert "products/" not in html
